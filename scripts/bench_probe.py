"""``scripts/bench probe``: the media probe's seconds per GiB against ``ffprobe -count_packets``.

For H.264 and HEVC (1080p, 25 fps, 16 Mbit/s, AAC audio, as a body camera
records) a ~1 GiB MP4 is made with the ffmpeg command (a 30 s encode looped
without re-encoding; kept in the work directory, never committed).  On each
file, interleaved, ``--repeat`` times:

- ``ffprobe -v error -count_packets -show_streams``: FFmpeg's own tool
  reading every packet, the reference;
- the agent's probe as the daemon runs it (child process, demux of every
  packet, sampled decode), and with decoding off (demux only);

plus, on a 6 s clip, the probe in its child process against the same
examination in-process: what the sandbox costs per clip; and the probe
with the clip's thumbnail made too (OpenCV loaded in the child, the first
frame converted, resized and encoded): what a station with an officers'
screen pays per clip for it.  The page cache is
warm (the agent probes a clip it has just copied); ``--cold`` drops it
before each run (root only).  Medians are the figures; every sample is kept.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.bench_common import GIB, ROOT, drop_caches

SEGMENT_S = 30
ENCODERS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-g", "50"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
             "log-level=error:keyint=50", "-tag:v", "hvc1"],
}

AGENT_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
from agent import media
path, decode, thumb = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:] == ["thumbnail"]
t0 = time.perf_counter()
info = media.probe(path, decode_check=decode, thumbnail=thumb)
t1 = time.perf_counter()
m = info.to_dict()
print(json.dumps({"s": t1 - t0, "verdict": m["verdict"], "checks": m["checks"],
                  "thumbnail_bytes": len(info.thumbnail.jpeg) if info.thumbnail else None,
                  "packets": sum(s["packets"] for s in m["streams"]),
                  "child_peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

IN_PROCESS = r"""
import json, os, sys, time
from agent.media.examine import examine
fd = os.open(sys.argv[1], os.O_RDONLY)
t0 = time.perf_counter()
examine(fd)
print(json.dumps({"s": time.perf_counter() - t0}))
"""


def make_source(workdir: Path, codec: str, size_gib: float) -> Path:
    """A ~size_gib MP4 of ``codec``: one encoded segment, looped by stream copy."""
    target = workdir / f"{codec}-{size_gib:g}G.mp4"
    if target.exists():
        return target
    segment = workdir / f"{codec}-segment.mp4"
    if not segment.exists():
        subprocess.run([
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=25:duration={SEGMENT_S}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SEGMENT_S}",
            "-vf", "noise=alls=12:allf=t", *ENCODERS[codec], "-b:v", "16M", "-maxrate", "16M",
            "-bufsize", "16M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
            str(segment)], check=True)
    loops = max(1, round(size_gib * GIB / segment.stat().st_size))
    partial = target.with_suffix(".part.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops - 1),
                    "-i", str(segment), "-c", "copy", str(partial)], check=True)
    partial.rename(target)
    return target


def _timed(cmd: list[str], cold: bool) -> float:
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _agent(path: Path, decode: bool, cold: bool, thumbnail: bool = False) -> dict[str, Any]:
    if cold:
        drop_caches()
    proc = subprocess.run([sys.executable, "-c", AGENT_PROBE, str(path), "1" if decode else "0",
                           *(["thumbnail"] if thumbnail else [])],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def bench_probe(size_gib: float, workdir: Path, repeat: int, cold: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"size_gib": size_gib, "repeat": repeat, "cold": cold,
                               "files": []}
    for codec in ENCODERS:
        src = make_source(workdir, codec, size_gib)
        size = src.stat().st_size
        subprocess.run(["cat", str(src)], check=True, stdout=subprocess.DEVNULL)  # warm
        samples: dict[str, list[float]] = {"ffprobe": [], "agent": [], "agent_demux_only": []}
        rss, checks = [], {}
        for _ in range(repeat):
            samples["ffprobe"].append(_timed(["ffprobe", "-v", "error", "-count_packets",
                                              "-show_streams", "-of", "json", str(src)], cold))
            run = _agent(src, True, cold)
            assert run["verdict"] == "ok", run
            samples["agent"].append(run["s"])
            rss.append(run["child_peak_rss_kib"])
            checks = run["checks"]
            samples["agent_demux_only"].append(_agent(src, False, cold)["s"])
        gib = size / GIB
        med = {k: statistics.median(v) for k, v in samples.items()}
        entry = {
            "codec": codec, "file": src.name, "bytes": size, "packets": run["packets"],
            "ffprobe_count_packets_s_per_gib": round(med["ffprobe"] / gib, 3),
            "agent_probe_s_per_gib": round(med["agent"] / gib, 3),
            "agent_demux_only_s_per_gib": round(med["agent_demux_only"] / gib, 3),
            "agent_vs_ffprobe": round(med["agent"] / med["ffprobe"], 2),
            "probe_child_peak_rss_mib": round(max(rss) / 1024, 1),
            "decoded_packets": checks.get("decoded_packets"),
            "windows": checks.get("windows"),
            "samples_s": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        }
        results["files"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "samples_s"}), flush=True)
    results["sandbox"] = bench_sandbox(workdir, max(repeat, 9))
    print(json.dumps(results["sandbox"]), flush=True)
    return results


def bench_sandbox(workdir: Path, repeat: int) -> dict[str, Any]:
    """Per clip: the probe in its child process against the same examination in-process."""
    clip = workdir / "clip-6s.mp4"
    if not clip.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=1280x720:rate=25:duration=6", "-c:v", "libx264",
                        "-preset", "veryfast", "-pix_fmt", "yuv420p", str(clip)], check=True)
    child, inproc, thumbed = [], [], []
    thumbnail_bytes = None
    for _ in range(repeat):  # interleaved: the three see the same machine
        child.append(_agent(clip, True, False)["s"])
        proc = subprocess.run([sys.executable, "-c", IN_PROCESS, str(clip)], check=True,
                              capture_output=True, text=True, cwd=ROOT)
        inproc.append(json.loads(proc.stdout)["s"])
        run = _agent(clip, True, False, thumbnail=True)
        thumbed.append(run["s"])
        thumbnail_bytes = run["thumbnail_bytes"]
    med = {k: statistics.median(v) for k, v in (("child", child), ("inproc", inproc),
                                                 ("thumbed", thumbed))}
    return {"clip": "6 s 720p H.264, decoded whole",
            "child_process_s": round(med["child"], 3),
            "in_process_s": round(med["inproc"], 3),
            "sandbox_cost_s": round(med["child"] - med["inproc"], 3),
            "child_process_with_thumbnail_s": round(med["thumbed"], 3),
            "thumbnail_cost_s": round(med["thumbed"] - med["child"], 3),
            "thumbnail_bytes": thumbnail_bytes,
            "samples_s": {"child_process": [round(x, 3) for x in child],
                          "in_process": [round(x, 3) for x in inproc],
                          "child_process_with_thumbnail": [round(x, 3) for x in thumbed]}}
