"""systemd: the shipped unit's hardening score, readiness and watchdog over a real notify socket,
and the agent working under the unit's process hardening (seccomp filter, W^X, address families).

systemd is not PID 1 here: the unit is judged by ``systemd-analyze`` (security and
verify), the notify protocol is received on a real ``AF_UNIX`` datagram socket as
systemd provides it, and the process knobs are applied as systemd applies them
(tests/support/hardening.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemonstate import DaemonState
from agent.progress import ProgressRegistry
from agent.sdnotify import Notifier
from agent.store import Store
from agent.supervise import MainLoop
from drivers.simcam import make_camera
from tests.conftest import write_station_config
from tests.support.hardening import directives

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "bwc-agent.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (scripts/setup installs it)")


@needs_analyze
def test_the_shipped_unit_scores_at_most_3_in_systemd_analyze_security(tmp_path: Path) -> None:
    unit = tmp_path / "bwc-agent.service"
    shutil.copy(UNIT, unit)
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=120)
    assert "Unknown key" not in done.stderr, done.stderr
    found = re.search(r"Overall exposure level for bwc-agent\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 3.0, done.stdout
    strict = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30",
                             str(unit)], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 0, "systemd-analyze's own threshold (3.0 = 30) agrees"


@needs_analyze
def test_the_shipped_unit_verifies_and_keeps_its_paths(tmp_path: Path) -> None:
    unit = tmp_path / "bwc-agent.service"
    text = UNIT.read_text(encoding="utf-8")
    unit.write_text(text.replace("/opt/bwc-agent/current/bin/bwc-agent", "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr
    knobs = directives(UNIT)
    assert knobs["Type"] == ["notify"] and knobs["NotifyAccess"] == ["main"]
    assert int(knobs["WatchdogSec"][0]) >= 30
    assert knobs["ExecStart"][0].startswith("/opt/bwc-agent/current/bin/bwc-agent run ")
    assert knobs["RestartPreventExitStatus"] == ["2"]
    assert knobs["CapabilityBoundingSet"] == [""]
    assert set(knobs["DeviceAllow"]) == {"char-ttyACM rw", "char-ttyUSB rw"}
    assert "PrivateDevices" not in knobs, "serial cameras need /dev/ttyACM* and /dev/ttyUSB*"
    assert "RequiresMountsFor=/var/lib/bwc-agent" in text
    for path in knobs["ReadWritePaths"][0].split():
        assert path.startswith("-") or path == "/var/lib/bwc-agent", path


# --- sd_notify ---------------------------------------------------------------------------------


class NotifySocket:
    """The datagram socket systemd gives a Type=notify service, collecting what it is sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def wait_for(self, prefix: str, timeout: float = 30.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages[after:]:
                if message.startswith(prefix):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} among {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    box = NotifySocket(tmp_path / "notify.sock")
    yield box
    box.close()


def test_notifier_speaks_sd_notify_over_a_datagram_socket(notify: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "4000000"})
    assert notifier.watchdog_s == 4.0
    assert notifier.ready("2 docked;\nbacklog 3")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notify.wait_for("STOPPING=1")
    # A newline in a status would start a key of its own: it is folded.
    assert notify.messages == ["READY=1\nSTATUS=2 docked; backlog 3", "WATCHDOG=1",
                               "STOPPING=1\nSTATUS=stopping"]


def test_notifier_reaches_an_abstract_socket_and_is_silent_outside_systemd() -> None:
    name = f"bwc-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"
    finally:
        sock.close()
    assert not Notifier({}).ready("x") and not Notifier({}).enabled
    # WatchdogSec= meant for another process (WATCHDOG_PID) is not ours to honour.
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    # systemd gone: the daemon goes on (and says so in its log once).
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).ready("x")


class _Station:
    """What the main loop reads of a station: its store, progress, broker and heartbeat."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.progress = ProgressRegistry()
        self.daemon_state = DaemonState(data_dir)

    def broker_state(self) -> None:
        return None


def test_a_hung_store_stops_the_watchdog_pings(tmp_path: Path, notify: NotifySocket) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-0001")
    loop = MainLoop(_Station(store, tmp_path),  # type: ignore[arg-type]
                    Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}))
    assert loop.interval == pytest.approx(0.2)
    stopping = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stopping,), daemon=True)
    runner.start()
    try:
        notify.wait_for("WATCHDOG=1\nSTATUS=0 docked; backlog 0", timeout=5)
        hold_release = threading.Event()
        held = threading.Event()

        def hang() -> None:  # a transaction that does not end
            with store.transaction():
                held.set()
                hold_release.wait(10)

        hanger = threading.Thread(target=hang, daemon=True)
        hanger.start()
        assert held.wait(5)
        time.sleep(0.3)  # a ping already under way may still arrive
        before = len(notify.messages)
        time.sleep(1.5)  # seven intervals
        assert len(notify.messages) == before, "no ping while the store hangs"
        hold_release.set()
        hanger.join(5)
        notify.wait_for("WATCHDOG=1", timeout=5, after=before)
    finally:
        stopping.set()
        runner.join(5)
        store.close()
    notify.wait_for("STOPPING=1", timeout=5)


# --- the daemon under the unit's hardening, talking to a notify socket ---------------------


def _hardened(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.support.hardening", str(UNIT), "--", *argv]


needs_seccomp = pytest.mark.skipif(
    not Path("/proc/self/status").read_text().count("Seccomp:"),
    reason="no seccomp in this kernel")


@needs_analyze
@needs_seccomp
def test_the_daemon_is_ready_pings_and_stops_under_the_units_hardening(
        tmp_path: Path, notify: NotifySocket) -> None:
    config = write_station_config(tmp_path)
    make_camera(tmp_path / "sim", serial="HARD001", clips=1, seconds=0.5, width=160,
                height=120, fps=10.0)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_hardened([sys.executable, "-m", "agent.cli.main", "run",
                                       "--config", str(config)]), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.wait_for("READY=1", timeout=60)
        # READY=1 only once the store is open and recovery done: the heartbeat is there.
        assert (tmp_path / "data" / "daemon.json").exists()
        assert "STATUS=" in ready and "docked" in ready
        index = notify.messages.index(ready)
        notify.wait_for("WATCHDOG=1", timeout=5, after=index + 1)
        notify.wait_for("WATCHDOG=1\nSTATUS=1 docked", timeout=30, after=index + 1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    notify.wait_for("STOPPING=1", timeout=5)
    daemon = json.loads((tmp_path / "data" / "daemon.json").read_text())
    assert daemon["stopped_at"]
    db = Store(tmp_path / "data" / "state.db", station_id="ST-0001", readonly=True)
    try:
        assert db.counts_by_state() == {"sealed": 1}
    finally:
        db.close()


@needs_analyze
@needs_seccomp
def test_ffmpeg_and_opencv_work_under_the_units_syscall_filter_and_w_xor_x(
        tmp_path: Path) -> None:
    """The media probe (PyAV/FFmpeg in a child process with its own limits) and OpenCV."""
    config = write_station_config(tmp_path)
    make_camera(tmp_path / "sim", serial="HARD002", clips=2, seconds=1, width=320,
                height=240, fps=10.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(_hardened([sys.executable, "-m", "agent.cli.main", "run", "--once",
                                     "--config", str(config)]), cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    db = Store(tmp_path / "data" / "state.db", station_id="ST-0001", readonly=True)
    try:
        media = [json.loads(r["media"]) for r in db.query("SELECT media FROM clips")]
    finally:
        db.close()
    assert len(media) == 2
    assert all(m["verdict"] == "ok" and m["decodable"] for m in media), media
    assert {m["codec"] for m in media} == {"mpeg4", "mjpeg"}
    probe = subprocess.run(_hardened([sys.executable, "-c", (
        "import mmap, cv2, numpy\n"
        "from tests.support.hardening import family_check\n"
        "frame = numpy.zeros((8, 8, 3), numpy.uint8)\n"
        "ok, jpeg = cv2.imencode('.jpg', frame)\n"
        "print('cv2', ok and cv2.imdecode(jpeg, 1).shape == (8, 8, 3))\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    print('wx allowed')\n"
        "except OSError:\n"
        "    print('wx refused')\n"
        "print(family_check())\n")]), cwd=ROOT, env=env, text=True, capture_output=True,
        timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == [
        "cv2 True", "wx refused",
        "AF_UNIX=ok AF_INET=ok AF_INET6=ok AF_NETLINK=EPERM AF_PACKET=EPERM"]
