"""The demo (``scripts/demo``): one station, two officers' cameras, a development platform.

Every component is real: mosquitto with TLS client certificates on
loopback, the HTTPS tus server, SQLite on disk, OpenCV-made clips, and the
``bwc-agent`` command line run as separate processes, as IT staff run it.
The platform issues officer credentials and a roster in which one officer
is revoked, and a dispatch case window; the station runs as a daemon while
the officers dock, so the demo ends with a verified officer, an unverified
one, and clips tagged with their case by the window.  ``bwc-agent`` runs
from the demo's work directory; ``--agent`` names the one to run (CI gives
the one installed from the wheel into a fresh virtualenv), by default this
source tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.simcam import make_camera  # noqa: E402
from scripts.devplatform.officers import (  # noqa: E402
    case_window,
    publish_case_window,
    publish_roster,
    revocation,
)
from scripts.devplatform.stand import DevStand  # noqa: E402

TIMELINE = ("discovered", "copied", "sealed", "uploaded", "acknowledged", "released")
CASE = "内公(治)行罚决字〔2019〕123号"


def heading(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class AgentCommand:
    """Runs ``bwc-agent`` as IT staff do: a separate process, printed with its output."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.command = command
        # The work directory, never the source tree: an installed agent must not need it.
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        print("$ bwc-agent " + " ".join(args), flush=True)
        result = subprocess.run([*self.command, *args], cwd=self.cwd, env=self.env, text=True,
                                capture_output=True)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            sys.stdout.write(result.stderr)
            if check:
                raise SystemExit(f"demo: bwc-agent {args[0]} exited {result.returncode}")
        return result

    def start(self, *args: str, log: Any) -> subprocess.Popen[bytes]:
        """The daemon, in the background."""
        print("$ bwc-agent " + " ".join(args) + " &", flush=True)
        return subprocess.Popen([*self.command, *args], cwd=self.cwd, env=self.env,
                                stdout=log, stderr=log)


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    try:
        db = sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return []  # the daemon has not created the database yet
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # nor its tables
    finally:
        db.close()


def wait(what: str, done: Callable[[], bool], timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.2)
    print(f"demo: {what}: not within {timeout:g} s", flush=True)
    return False


def with_page(config: Path) -> str:
    """Add the station's pages on a free local port to ``config``; their address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(config, "a", encoding="utf-8") as f:
        f.write(f"\n[web]\nport = {port}\n")
    return f"http://127.0.0.1:{port}/"


def page_served(url: str) -> bool:
    """Whether the officer page answers, in Chinese."""
    for _ in range(100):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200 and b'lang="zh-Hans-CN"' in response.read()
        except OSError:
            time.sleep(0.2)
    return False


def timeline(data_dir: Path) -> None:
    """Each clip's path through the states, from the custody log (times in UTC)."""
    for clip in query(data_dir, "SELECT clip_id, name FROM clips ORDER BY important DESC, name"):
        steps = []
        for entry in query(data_dir, "SELECT at, kind FROM custody_log WHERE clip_id = ? "
                                     "ORDER BY seq", (clip["clip_id"],)):
            state = entry["kind"].removeprefix("clip.")
            if state in TIMELINE:
                steps.append(f"{state} {entry['at'][11:23]}")
        print(f"{clip['name']}\n    " + " -> ".join(steps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo")
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-run")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--keep-page", action="store_true",
                        help="keep the daemon and its page up at the end until Ctrl-C")
    parser.add_argument("--agent", type=Path, metavar="BWC_AGENT",
                        help="the bwc-agent command to run (default: this source tree's)")
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ok = True
    agent = AgentCommand([str(args.agent.resolve())] if args.agent else
                         [sys.executable, "-m", "agent.cli.main"], work)
    heading("bwc-agent")
    agent("--version")

    heading("Development platform: PKI, mosquitto (TLS, client certificates), tus over HTTPS")
    with DevStand(work / "platform") as stand:
        print(f"broker   mqtts://127.0.0.1:{stand.broker_port}")
        print(f"uploads  {stand.platform.upload_url}")
        print(f"CA       {stand.pki.ca_cert_path}")

        heading("Station ST-0001: enrolled with the platform CA over EST, one-time token")
        config = stand.station(work / "station", "ST-0001", est=True)
        data_dir = work / "station" / "data"
        token = work / "station" / "enrol.token"
        token.write_text(stand.est.add_token("ST-0001") + "\n")
        token.chmod(0o600)
        agent("enroll", "--config", str(config), "--token-file", str(token))
        agent("config", "check", "--config", str(config))

        heading("Platform: officer credentials, a roster with one officer revoked, "
                "a dispatch case window")
        officers = stand.officers
        li_ming = officers.credential("010203", "李明", credential_id="CRED-010203-2026",
                                      card_id="110105199001010203")
        wang_fang = officers.credential("020304", "王芳", credential_id="CRED-020304-2026")
        roster = officers.snapshot(1, [li_ming, wang_fang],
                                   revoked=[revocation(wang_fang, "证件遗失 (card lost)")])
        publish_roster(stand.platform, "ST-0001", roster)
        print(f"credential key  {officers.pub_path}")
        print("roster version 1: 010203 李明 (valid), 020304 王芳 (REVOKED: card lost)")
        start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        window = case_window(stand.pki.signer(), officer_id="010203",
                             start=start - dt.timedelta(minutes=5),
                             end=start + dt.timedelta(minutes=30), case_id=CASE,
                             reference="110-接警-20260301-0042", window_id="W-DEMO-1")
        print(f"case window W-DEMO-1: officer 010203, case {CASE}, "
              f"{start - dt.timedelta(minutes=5):%H:%M}..{start + dt.timedelta(minutes=30):%H:%M}"
              " UTC")

        heading("The station runs as a daemon; it receives the roster and the case window")
        page = with_page(config)
        log = open(work / "station" / "agent.log", "w")  # noqa: SIM115 - owned by the daemon
        daemon = agent.start("run", "--config", str(config), log=log)
        try:
            served = page_served(page)
            print(f"station screen: officer page {page}  IT page {page}it "
                  f"({'served' if served else 'NOT served'}; IT accounts: bwc-agent web user "
                  f"add NAME --config {config})")
            print("officer sign-in at the screen: card 110105199001010203 (李明), typed into "
                  "the page and Enter, as a card reader does")
            ok &= served
            ok &= wait("roster accepted", lambda: bool(query(
                data_dir, "SELECT 1 FROM custody_log WHERE kind = 'roster.accepted'")))
            publish_case_window(stand.platform, "ST-0001", window)
            ok &= wait("case window accepted", lambda: bool(query(
                data_dir, "SELECT 1 FROM custody_log WHERE kind = 'case_window.accepted'")))
            agent("officers", "roster", "--config", str(config))

            heading(f"Officers dock their cameras: 李明 ({args.clips} clips) and 王芳 (1 clip)")
            sim = work / "station" / "sim"
            cams = [
                make_camera(sim, serial="ZFY0042", officer_id="010203", officer_name="李明",
                            unit_name="示范执法大队", clips=args.clips, seconds=2.0, width=320,
                            height=240, fps=15.0, start=start),
                make_camera(sim, serial="ZFY0043", officer_id="020304", officer_name="王芳",
                            unit_name="示范执法大队", clips=1, seconds=2.0, width=320,
                            height=240, fps=15.0, start=start),
            ]
            for cam in cams:
                for path in sorted((cam / "DCIM").rglob("*.*")):
                    print(f"  {cam.name}/{path.relative_to(cam)}  {path.stat().st_size} bytes")
            total = args.clips + 1
            ok &= wait("every clip released", lambda: len(rows := query(
                data_dir, "SELECT state FROM clips")) == total and all(
                r["state"] == "released" for r in rows))
            if args.keep_page:
                print(f"the station screen stays up at {page} until Ctrl-C", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    daemon.wait()
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
            log.close()
        ok &= daemon.returncode == 0

        heading("Clips (state, officer and credential status, cases, flags)")
        agent("clips", "--config", str(config))

        heading("Each clip's way through the custody log")
        timeline(data_dir)

        heading("Platform verdicts (SHA-256 of the stored upload vs the signed manifest)")
        verdicts = stand.platform.verdicts()
        for verdict in verdicts:
            reasons = "; ".join(verdict.get("reasons") or [])
            print(f"  {verdict['clip_id']}  {verdict['verdict']:<9} ack sent: "
                  f"{'yes' if verdict.get('ack_sent') else 'no'}  {reasons}")
        alerts = [e["data"] for e in stand.platform.events("ST-0001") if e["type"] == "alert"]
        for alert in alerts:
            print(f"  alert {alert['code']}: {alert.get('message', '')}")

        heading("The cameras after release (acknowledged clips deleted from them)")
        left = 0
        for cam in cams:
            on_cam = [p for p in (cam / "DCIM").rglob("*") if p.is_file()]
            left += len(on_cam)
            print(f"  {len(on_cam)} recordings left on {cam.name}")

        heading("Station status")
        agent("status", "--config", str(config))

        heading(f"Auditor: export case {CASE} and verify the bundle offline")
        bundle = work / "bundle"
        export = agent("export", "--config", str(config), "--case", CASE, "--out", str(bundle),
                       check=False)
        verified = None
        if export.returncode == 0:
            verified = agent("verify", "--trust", str(stand.pki.ca_cert_path), "--officer-key",
                             str(officers.pub_path), str(bundle), check=False)

    clips = {r["officer_id"]: r for r in query(data_dir, "SELECT * FROM clips")}
    cases = {r["clip_id"] for r in query(data_dir, "SELECT clip_id FROM clip_cases "
                                                   "WHERE case_id = ?", (CASE,))}
    li_clips = [r for r in query(data_dir, "SELECT * FROM clips WHERE officer_id = '010203'")]
    shown = {
        "verified officer 010203": all(r["officer_status"] == "valid" for r in li_clips),
        "unverified officer 020304 (revoked)":
            clips.get("020304") is not None and clips["020304"]["officer_status"] == "revoked",
        f"case {CASE} from the case window": {r["clip_id"] for r in li_clips} == cases,
        "every clip accepted by the platform": len(verdicts) == args.clips + 1 and all(
            v["verdict"] == "accepted" for v in verdicts),
        "cameras emptied after the platform's acks": left == 0,
        "bundle verified": verified is not None and verified.returncode == 0,
    }
    heading("What the demo shows")
    for what, good in shown.items():
        print(f"  {'yes' if good else 'NO '}  {what}")
    print(f"\nvault: {data_dir / 'vault'}\nstation config: {config}\n"
          f"station log: {work / 'station' / 'agent.log'}\n"
          f"platform records: {work / 'platform' / 'platform' / 'verdicts.json'}")
    ok = ok and all(shown.values())
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    sys.exit(main())
