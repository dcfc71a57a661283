"""The demo (``scripts/demo``): one station, one simulated camera, a development platform.

Every component is real: mosquitto with TLS client certificates on
loopback, the HTTPS tus server, SQLite on disk, OpenCV-made clips, and the
``bwc-agent`` command line run as a separate process, as IT staff run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.simcam import make_camera  # noqa: E402
from scripts.devplatform.stand import DevStand  # noqa: E402

TIMELINE = ("discovered", "copied", "sealed", "uploaded", "acknowledged", "released")


def heading(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def agent(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "agent.cli.main", *args]
    print("$ bwc-agent " + " ".join(args), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.stdout.write(result.stderr)
        if check:
            raise SystemExit(f"demo: bwc-agent {args[0]} exited {result.returncode}")
    return result


def timeline(data_dir: Path) -> None:
    """Each clip's path through the states, from the custody log (times in UTC)."""
    db = sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    clips = db.execute("SELECT clip_id, name FROM clips ORDER BY important DESC, name").fetchall()
    for clip in clips:
        steps = []
        for entry in db.execute("SELECT at, kind FROM custody_log WHERE clip_id = ? ORDER BY seq",
                                (clip["clip_id"],)):
            state = entry["kind"].removeprefix("clip.")
            if state in TIMELINE:
                steps.append(f"{state} {entry['at'][11:23]}")
        print(f"{clip['name']}\n    " + " -> ".join(steps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo")
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-run")
    parser.add_argument("--clips", type=int, default=6)
    args = parser.parse_args(argv)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    heading("Development platform: PKI, mosquitto (TLS, client certificates), tus over HTTPS")
    with DevStand(work / "platform") as stand:
        print(f"broker   mqtts://127.0.0.1:{stand.broker_port}")
        print(f"uploads  {stand.platform.upload_url}")
        print(f"CA       {stand.pki.ca_cert_path}")

        heading("Station ST-0001: configuration, signing key enrolled at the platform CA")
        config = stand.station(work / "station", "ST-0001")
        data_dir = work / "station" / "data"
        agent("config", "check", "--config", str(config))

        heading(f"An officer docks a camera with {args.clips} clips (real MP4/AVI from OpenCV)")
        cam = make_camera(work / "station" / "sim", serial="ZFY0042", officer_id="010203",
                          officer_name="李明", unit_name="示范执法大队", clips=args.clips,
                          seconds=2.0, width=320, height=240, fps=15.0)
        for path in sorted((cam / "DCIM").rglob("*.*")):
            print(f"  {path.relative_to(cam)}  {path.stat().st_size} bytes")

        heading("The station offloads, seals, uploads and waits for the platform's acks")
        run = agent("run", "--once", "--config", str(config), "--platform-timeout", "60",
                    check=False)

        heading("Clips (name, size, SHA-256, media, state, flags)")
        agent("clips", "--config", str(config))

        heading("Each clip's way through the custody log")
        timeline(data_dir)

        heading("Platform verdicts (SHA-256 of the stored upload vs the signed manifest)")
        verdicts = stand.platform.verdicts()
        for verdict in verdicts:
            reasons = "; ".join(verdict.get("reasons") or [])
            print(f"  {verdict['clip_id']}  {verdict['verdict']:<9} ack sent: "
                  f"{'yes' if verdict.get('ack_sent') else 'no'}  {reasons}")

        heading("The camera after release (acknowledged clips deleted from it)")
        left = [p for p in (cam / "DCIM").rglob("*") if p.is_file()]
        print(f"  {len(left)} recordings left on {cam.name}")

        heading("Station status")
        agent("status", "--config", str(config))

        heading("Auditor: export every clip and verify the bundle offline")
        bundle = work / "bundle"
        export = agent("export", "--config", str(config), "--all", "--out", str(bundle),
                       check=False)
        if export.returncode == 0:
            agent("verify", "--trust", str(stand.pki.ca_cert_path), str(bundle), check=False)

    print(f"\nvault: {data_dir / 'vault'}\nstation config: {config}\n"
          f"platform records: {work / 'platform' / 'platform' / 'verdicts.json'}")
    ok = (run.returncode == 0 and len(verdicts) == args.clips
          and all(v["verdict"] == "accepted" for v in verdicts))
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    sys.exit(main())
