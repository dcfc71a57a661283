"""Benchmarks for the agent's hot paths, each measured against standard tools in the same run.

ingest: the agent's single-pass copy (read + SHA-256 + durable write) and its verify
        pass (re-read from disk, page cache dropped), against `cp` + `sync`,
        `cp` + `sync` + `sha256sum`, and `cp` + `sync` + `openssl dgst -sha256`.
upload: a tus upload over HTTPS to the development tus server (or, with
        --server node, to the official @tus/server), against `curl` sending
        the same bytes to the same server in one PATCH.
verify: `bwc-agent verify`-style hashing of a clip against `openssl dgst -sha256`.
probe:  the media probe's seconds per GiB on H.264 and HEVC files against
        `ffprobe -count_packets` (scripts/bench_probe.py).
docks:  N cameras docked at once, each read at a USB-like rate through a kernel
        throttle, against the time reading them in parallel takes (scripts/bench_docks.py).
fleet:  N station agents against one broker and one upload server, both killed and
        restarted mid-run (scripts/bench_fleet.py).

Peak RSS is measured in a child process that does only the measured work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts.bench_common import OUT

# scripts/bench docks: per camera, 400 MiB of recordings in clips of a few minutes each
# (200 MiB: 4.5 min of 720p at 6 Mbit/s), which the probe checks by sampled decode.
DOCKS_SIZE_MIB = 400
DOCKS_CLIPS = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    sub = parser.add_subparsers(dest="what", required=True)
    ing = sub.add_parser("ingest", help="copy + hash + durable write, and verify")
    ing.add_argument("--sizes", default="1,4", help="GiB, comma-separated (default 1,4)")
    ing.add_argument("--chunk-kib", type=int, default=8192)
    ing.add_argument("--queue-chunks", type=int, default=3)
    ing.add_argument("--repeat", type=int, default=5, help="runs per contender; medians")
    ing.add_argument("--workdir", type=Path, default=OUT / "ingest")
    up = sub.add_parser("upload", help="tus upload over HTTPS vs curl")
    up.add_argument("--size-gib", type=float, default=1.0)
    up.add_argument("--chunk-mib", type=int, default=32,
                    help="bytes per PATCH (the station's platform.upload_chunk_mib)")
    up.add_argument("--repeat", type=int, default=9, help="runs per contender; medians")
    up.add_argument("--server", choices=("dev", "node"), default="dev",
                    help="dev: the development tus server (with and without checksums); "
                         "node: the official @tus/server (installed from npm)")
    up.add_argument("--workdir", type=Path, default=OUT / "upload")
    ver = sub.add_parser("verify", help="verify hashing vs openssl dgst")
    ver.add_argument("--size-gib", type=float, default=1.0)
    ver.add_argument("--workdir", type=Path, default=OUT / "verify")
    pro = sub.add_parser("probe", help="media probe vs ffprobe -count_packets, s/GiB")
    pro.add_argument("--size-gib", type=float, default=1.0)
    pro.add_argument("--repeat", type=int, default=5, help="runs per contender; medians")
    pro.add_argument("--cold", action="store_true",
                     help="drop the page cache before every run (root only)")
    pro.add_argument("--workdir", type=Path, default=OUT / "probe")
    docks = sub.add_parser("docks", help="N cameras docked at once at a USB-like rate each")
    docks.add_argument("--cameras", type=int, default=16)
    docks.add_argument("--rate", type=float, default=20.0, help="MiB/s each camera reads at")
    docks.add_argument("--size", type=int, default=DOCKS_SIZE_MIB,
                       help=f"MiB of clips per camera (default {DOCKS_SIZE_MIB})")
    docks.add_argument("--clips", type=int, default=DOCKS_CLIPS,
                       help=f"clips per camera (default {DOCKS_CLIPS})")
    docks.add_argument("--repeat", type=int, default=3, help="runs; medians")
    docks.add_argument("--mode", choices=("auto", "blkio", "simulated"), default="auto",
                       help="blkio: ext4 loop volumes with a kernel read throttle (root); "
                            "simulated: the simulated driver's read_kib_s")
    docks.add_argument("--workdir", type=Path, default=OUT / "docks")
    fleet = sub.add_parser("fleet", help="N station agents, broker and upload server killed")
    fleet.add_argument("--stations", type=int, default=100)
    fleet.add_argument("--clips", type=int, default=3, help="clips per station's camera")
    fleet.add_argument("--window", type=float, default=30.0,
                       help="seconds over which the cameras dock")
    fleet.add_argument("--down", type=float, default=3.0,
                       help="seconds the broker and the upload server stay down")
    fleet.add_argument("--max-uploads", type=int, default=8,
                       help="the upload server's load cap (more get 503 + Retry-After)")
    fleet.add_argument("--retry-after", type=int, default=5)
    fleet.add_argument("--timeout", type=float, default=900.0)
    fleet.add_argument("--workdir", type=Path, default=OUT / "fleet")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.what == "ingest":
        from scripts.bench_ingest import bench_ingest
        sizes = [float(s) for s in args.sizes.split(",")]
        result = bench_ingest(sizes, args.workdir, args.chunk_kib, args.queue_chunks,
                              args.repeat)
    elif args.what == "upload":
        from scripts.bench_upload import bench_upload
        result = bench_upload(args.size_gib, args.workdir, args.chunk_mib, args.repeat,
                              args.server)
    elif args.what == "docks":
        from scripts.bench_docks import bench_docks
        result = bench_docks(args.cameras, args.rate, args.size, args.clips, args.repeat,
                             args.workdir, args.mode)
    elif args.what == "fleet":
        from scripts.bench_fleet import bench_fleet
        result = bench_fleet(args.stations, args.clips, args.window, args.down,
                             args.max_uploads, args.retry_after, args.workdir, args.timeout)
    elif args.what == "probe":
        from scripts.bench_probe import bench_probe
        result = bench_probe(args.size_gib, args.workdir, args.repeat, args.cold)
    else:
        from scripts.bench_upload import bench_verify
        result = bench_verify(args.size_gib, args.workdir)
    OUT.mkdir(exist_ok=True)
    name = "upload-node" if args.what == "upload" and args.server == "node" else args.what
    if args.what == "docks":
        name = f"docks-{args.cameras}cam-{args.rate:g}mibs"
    elif args.what == "fleet":
        name = f"fleet-{args.stations}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
