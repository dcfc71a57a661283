"""``scripts/bench docks``: N cameras docked at once, read at a USB-like rate each.

Each camera is an ext4 image on its own loop device, mounted read-only below
the simulated driver's root, and read through a real kernel throttle: the
agent runs in a cgroup (v1 blkio) whose ``blkio.throttle.read_bps_device``
limits each loop device to ``--rate`` MiB/s.  blkio v1 throttles I/O by the
cgroup of the task that issues it, and every thread of the agent (started in
the cgroup) inherits it; buffered reads are throttled when their bios are
submitted and page-cache hits are not, so the page cache is dropped before
each run and the volumes are mounted afresh.  Where that is not possible
(not root, no blkio, no loop devices) the cameras are plain directories read
through the simulated driver's own throttle (``devices.simulated.read_kib_s``).

Clip mix: ``--clips`` real H.264 clips per camera (720p30, ~6 Mbit/s, as body
cameras record), made once with ffmpeg and cached: one 20 s encode, looped
into each clip by remuxing (no re-encode) up to ``--size / --clips`` MiB,
with the camera and clip in the metadata so no two clips share a digest.
Clips above 64 MiB get the probe's sampled decode, as a shift's recordings
do; the probe load is what such files really cost.

Per run: ``bwc-agent run --once`` on a fresh data directory (the command IT
staff run), timed from its start to its exit (``process_s``) and from the
first dock session to the last clip sealed, as the store records them
(``sessions_s``, the headline); the ideal is ``size / rate`` (every camera
read in parallel), or the vault disk's write rate measured here if that is
lower.  Peak RSS of the agent (VmHWM) and of the agent with its probe
processes (sampled every 100 ms), CPU seconds (the agent and every probe),
the load average before and after.  Every clip must be ``sealed`` and
``verified`` with the digest of the clip on the camera.  Samples go to
``bench-run/docks-<N>cam-<rate>mibs.json``; the machine is shared, so runs
are repeated and medians reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scripts.bench_common import ROOT, drop_caches

MIB = 1024 * 1024
BLKIO = Path("/sys/fs/cgroup/blkio")
SERIAL = "BNC{:04d}"
MASTER_S = 20


@dataclass(frozen=True)
class Camera:
    index: int
    serial: str
    clips: dict[str, tuple[str, int]]  # relative path -> (sha256, size)
    image: Path | None  # ext4 image (blkio mode) or None
    directory: Path | None  # plain directory (simulated mode)


def bench_docks(cameras: int, rate_mib_s: float, size_mib: int, clips: int, repeat: int,
                workdir: Path, mode: str) -> dict[str, Any]:
    # Stopped (SIGTERM): unmount, detach and remove the cgroup on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if mode == "auto":
        mode = "blkio" if blkio_available() else "simulated"
    if mode == "blkio" and not blkio_available():
        raise SystemExit("--mode blkio needs root, cgroup v1 blkio and loop devices")
    workdir = workdir.resolve()
    cache = workdir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    master = make_master(cache)
    cams = [make_camera(cache, master, i, size_mib, clips, image=(mode == "blkio"))
            for i in range(cameras)]
    total = sum(size for cam in cams for _, size in cam.clips.values())
    write_mib_s = vault_write_rate(workdir, min(total, 2048 * MIB))
    per_camera_mib = total / cameras / MIB
    ideal = max(per_camera_mib / rate_mib_s, total / MIB / write_mib_s)
    runs = []
    for k in range(repeat):
        run = run_once(cams, workdir / f"run-{k}", rate_mib_s, mode)
        run["efficiency"] = round(ideal / run["sessions_s"], 3)
        run["read_efficiency"] = round(ideal / run["read_s"], 3)
        run["process_efficiency"] = round(ideal / run["process_s"], 3)
        runs.append(run)
        print(json.dumps(run), flush=True)
    median = {key: round(statistics.median(r[key] for r in runs), 3)
              for key in ("sessions_s", "read_s", "process_s", "efficiency", "read_efficiency",
                    "process_efficiency",
                          "cpu_s", "agent_peak_rss_mib", "tree_peak_rss_mib")}
    return {
        "command": (f"scripts/bench docks --cameras {cameras} --rate {rate_mib_s:g} "
                    f"--size {size_mib} --clips {clips} --repeat {repeat}"),
        "mode": mode, "cameras": cameras, "rate_mib_s": rate_mib_s,
        "size_mib_per_camera": round(per_camera_mib, 1), "clips_per_camera": clips,
        "clip": "H.264 720p30 ~6 Mbit/s MP4 (ffmpeg libx264, looped by remux)",
        "vault_write_mib_s": round(write_mib_s, 1), "ideal_s": round(ideal, 3),
        "cpus": len(os.sched_getaffinity(0)), "median": median, "runs": runs,
    }


# --- the clips and the cameras ------------------------------------------------------------


def make_master(cache: Path) -> Path:
    """A 20 s 720p30 H.264 clip at ~6 Mbit/s, encoded once (noise: not trivially small)."""
    master = cache / "master-720p30.mp4"
    if not master.exists():
        temp = master.with_suffix(".tmp.mp4")
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
             "testsrc2=size=1280x720:rate=30,noise=alls=12:allf=t", "-t", str(MASTER_S),
             "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "6M", "-maxrate", "6M",
             "-bufsize", "12M", "-g", "30", "-pix_fmt", "yuv420p", str(temp)], check=True)
        temp.rename(master)
    return master


def make_clip(master: Path, out: Path, size: int, tag: str) -> None:
    """``master`` looped (remuxed, not re-encoded) into a clip of about ``size`` bytes."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(master),
         "-c", "copy", "-fs", str(size), "-metadata", f"comment={tag}", "-f", "mp4",
         str(out)], check=True)


def make_camera(cache: Path, master: Path, index: int, size_mib: int, clips: int, *,
                image: bool) -> Camera:
    """Camera ``index`` with ``clips`` clips totalling ``size_mib``, built once and cached."""
    serial = SERIAL.format(index)
    name = f"{serial}-{size_mib}M-{clips}c"
    manifest = cache / f"{name}.json"
    target = cache / (f"{name}.img" if image else name)
    if not manifest.exists() or not target.exists():
        with contextlib.suppress(FileNotFoundError):
            target.unlink() if image else shutil.rmtree(target)
        staging = cache / f"{name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        files = _camera_files(staging, master, serial, size_mib * MIB // clips, clips)
        if image:
            _ext4_image(target, staging, size_mib)
            shutil.rmtree(staging)
        else:
            staging.rename(target)
        manifest.write_text(json.dumps(files))
    files = json.loads(manifest.read_text())
    return Camera(index, serial, {p: (v[0], v[1]) for p, v in files.items()},
                  target if image else None, None if image else target)


def _camera_files(root: Path, master: Path, serial: str, clip_size: int,
                  clips: int) -> dict[str, tuple[str, int]]:
    day = root / "DCIM" / "20260105"
    day.mkdir(parents=True)
    files = {}
    for n in range(clips):
        # Catalog naming (serial, officer, start time, sequence), an hour apart.
        rel = f"DCIM/20260105/{serial}_000001_20260105{8 + n:02d}0000_{n + 1:04d}.MP4"
        make_clip(master, root / rel, clip_size, f"{serial} clip {n + 1}")
        files[rel] = (_sha256(root / rel), (root / rel).stat().st_size)
    identity = {"serial": serial, "vendor": "Bench", "model": "BNC-1", "firmware": "1.0",
                "officer_id": "000001", "officer_name": "Bench Officer",
                "unit_code": "000000000000", "unit_name": "Bench Unit", "clock_offset_s": 0.0}
    (root / "BWC_DEVICE.json").write_text(json.dumps(identity))
    return files


def _ext4_image(image: Path, files: Path, size_mib: int) -> None:
    size = int(size_mib * 1.15 + 32) * MIB
    temp = image.with_suffix(".tmp")
    with open(temp, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(files), str(temp)],
                   check=True)
    temp.rename(image)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MIB):
            h.update(block)
    return h.hexdigest()


def vault_write_rate(workdir: Path, size: int) -> float:
    """MiB/s of a direct, fsynced sequential write on the vault's file system."""
    probe = workdir / "write-rate.bin"
    rates = []
    for _ in range(3):
        drop_caches()
        start = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={probe}", "bs=8M",
                        f"count={max(1, size // (8 * MIB))}", "oflag=direct", "conv=fsync",
                        "status=none"], check=True)
        rates.append(size / MIB / (time.perf_counter() - start))
        probe.unlink()
    return statistics.median(rates)


# --- the kernel throttle ------------------------------------------------------------------


def blkio_available() -> bool:
    return (os.geteuid() == 0 and (BLKIO / "blkio.throttle.read_bps_device").exists()
            and shutil.which("losetup") is not None and Path("/dev/loop-control").exists())


@contextlib.contextmanager
def docked_volumes(cams: list[Camera], root: Path, rate_mib_s: float,
                   mode: str) -> Iterator[Path | None]:
    """Dock every camera under ``root``; yields the throttling cgroup (blkio mode)."""
    root.mkdir(parents=True)
    if mode != "blkio":
        for cam in cams:  # hard links: the same inodes each run, nothing copied
            assert cam.directory is not None
            shutil.copytree(cam.directory, root / cam.serial, copy_function=os.link)
        yield None
        return
    cgroup = BLKIO / f"bwc-bench-{os.getpid()}"
    cgroup.mkdir()
    mounts: list[tuple[Path, str]] = []
    try:
        for cam in cams:
            assert cam.image is not None
            dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(cam.image)],
                                 check=True, capture_output=True, text=True).stdout.strip()
            where = root / cam.serial
            where.mkdir()
            subprocess.run(["mount", "-t", "ext4", "-o", "ro,noatime", dev, str(where)],
                           check=True)
            mounts.append((where, dev))
            majmin = Path(f"/sys/class/block/{Path(dev).name}/dev").read_text().strip()
            (cgroup / "blkio.throttle.read_bps_device").write_text(
                f"{majmin} {int(rate_mib_s * MIB)}\n")
        yield cgroup
    finally:
        for where, dev in reversed(mounts):
            subprocess.run(["umount", str(where)], check=False)
            subprocess.run(["losetup", "-d", dev], check=False)
        with contextlib.suppress(OSError):
            cgroup.rmdir()


# --- one run ------------------------------------------------------------------------------


def run_once(cams: list[Camera], run_dir: Path, rate_mib_s: float, mode: str) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = run_dir / "station.toml"
    read_kib_s = 0 if mode == "blkio" else int(rate_mib_s * 1024)
    config.write_text(textwrap.dedent(f"""\
        [station]
        id = "ST-BENCH"
        data_dir = "{run_dir / 'data'}"
        log_level = "debug"

        [devices.simulated]
        root = "{run_dir / 'sim'}"
        read_kib_s = {read_kib_s}
        """))
    try:
        with docked_volumes(cams, run_dir / "sim", rate_mib_s, mode) as cgroup:
            drop_caches()
            load_before = os.getloadavg()
            sample = _run_agent(config, cgroup, run_dir / "agent.log")
            load_after = os.getloadavg()
        sample.update(_check_store(run_dir / "data" / "state.db", cams,
                                   run_dir / "agent.log"))
    finally:
        if not os.environ.get("BWC_BENCH_KEEP"):
            shutil.rmtree(run_dir / "data", ignore_errors=True)  # the vault: GiBs per run
    sample["loadavg_before"] = [round(x, 2) for x in load_before]
    sample["loadavg_after"] = [round(x, 2) for x in load_after]
    return sample


def _run_agent(config: Path, cgroup: Path | None, log: Path) -> dict[str, Any]:
    agent = Path(sys.executable).parent / "bwc-agent"
    argv = [str(agent), "run", "--once", "--config", str(config)]
    if cgroup is not None:
        # Into the cgroup before exec: every thread the agent starts inherits it.
        argv = ["sh", "-c", f'echo $$ > "{cgroup / "cgroup.procs"}" && exec "$@"', "sh", *argv]
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        hwm, tree = 0, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: agent and probes
            if pid:
                break
            hwm = max(hwm, _status_kib(proc.pid, "VmHWM"))
            tree = max(tree, _tree_rss_kib(proc.pid))
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bwc-agent run --once failed ({proc.returncode}); see {log}")
    return {"process_s": round(elapsed, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "agent_peak_rss_mib": round(hwm / 1024, 1),
            "tree_peak_rss_mib": round(tree / 1024, 1)}


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree_rss_kib(pid: int) -> int:
    """RSS of ``pid`` and its children (the probe processes)."""
    total = _status_kib(pid, "VmRSS")
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():  # probes are children of workers
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    total += _status_kib(int(child), "VmRSS")
    return total


def _check_store(db_path: Path, cams: list[Camera], log: Path) -> dict[str, Any]:
    """Every clip sealed and verified with its camera's digest; the sessions' span.

    ``read_s`` ends when the last clip's bytes are in the vault (the agent's debug
    line "bytes copied in"), ``sessions_s`` when the last clip is sealed.
    """
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT device_serial, path, state, verified, sha256, size, "
                          "sealed_at FROM clips").fetchall()
        first_dock = db.execute("SELECT MIN(docked_at) FROM docks").fetchone()[0]
    finally:
        db.close()
    expected = {(cam.serial, path): clip for cam in cams for path, clip in cam.clips.items()}
    got = {(r[0], r[1]): (r[4], r[5]) for r in rows}
    bad = [r for r in rows if (r[2], r[3]) != ("sealed", 1)]
    if got != expected or bad:
        raise SystemExit(f"not every clip is sealed and verified with its digest: "
                         f"{len(rows)} clips, {len(bad)} not sealed+verified, "
                         f"{len(set(expected) - set(got))} missing")
    last_seal = max(r[6] for r in rows)
    copied = [line[:23] for line in log.read_text(errors="replace").splitlines()
              if "bytes copied in" in line]
    last_read = max(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t in copied)
    return {"clips_sealed_verified": len(rows),
            "read_s": round(last_read - _ts(first_dock), 3),
            "sessions_s": round(_ts(last_seal) - _ts(first_dock), 3)}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
