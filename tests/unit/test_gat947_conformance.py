"""The vendor conformance kit, run as vendors run it: ``scripts/gat947-conformance PORT``.

Against the project's simulator every rule holds; against a camera written
from docs/GAT947.md with deliberate departures, each departure is named and
every other rule still holds (one fault does not hide or fake another).
Both cameras answer on real pseudo-terminals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.gat947_sim import Gat947Sim
from drivers.gat947_wire import ZfyInfo
from tests.support.gat947_doccam import DocCamera

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "scripts" / "gat947-conformance"
TIMEOUT = "0.3"


def run_kit(port: str, password_file: Path, *extra: str) -> tuple[int, dict[str, str], str]:
    """Exit status, {check: verdict}, and the printed report."""
    env = dict(os.environ, BWC_VENV=str(Path(sys.executable).parent.parent))
    proc = subprocess.run([str(KIT), port, "--password-file", str(password_file), "--timeout",
                           TIMEOUT, *extra], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    verdicts = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"\s+(PASS|FAIL|WARN|SKIP)\s+§\d+\s+([a-z0-9-]+): ", line)
        if match:
            verdicts[match.group(2)] = match.group(1)
    return proc.returncode, verdicts, proc.stdout + proc.stderr


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "camera.password"
    path.write_text("doc-pass\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Gat947Sim]:
    (tmp_path / "storage").mkdir()
    (tmp_path / "mnt").mkdir()
    camera = Gat947Sim(tmp_path / "storage", tmp_path / "mnt", password="doc-pass",
                       id_code="ZFY0042", zfy=ZfyInfo("ZFY0042", "012345", "张警官",
                                                      "110105000000", "朝阳执法大队")).start()
    yield camera
    camera.close()


def test_the_simulator_conforms(sim: Gat947Sim, password_file: Path, tmp_path: Path) -> None:
    status, verdicts, text = run_kit(sim.port, password_file, "--switch", "--mount-root",
                                     str(tmp_path / "mnt"), "--mount-timeout", "3")
    assert status == 0, text
    assert verdicts.pop("lockout") == "SKIP"  # a separate run (it locks the camera)
    assert set(verdicts.values()) == {"PASS"}, text
    assert len(verdicts) >= 40  # every rule of the document was driven
    assert re.search(r"^\d+ conform, 0 do not, 0 warning\(s\), 1 skipped$", text, re.M), text
    assert sim.mounted == tmp_path / "mnt" / "ZFY0042"
    assert abs(sim.clock_offset_s) < 2.0  # left with the true time
    assert sim.zfy.officer_name == "张警官"  # the officer information is unchanged


def test_the_lockout_check_locks_and_is_opt_in(sim: Gat947Sim, password_file: Path) -> None:
    status, verdicts, text = run_kit(sim.port, password_file)
    assert status == 0 and verdicts["lockout"] == "SKIP" and verdicts["set-msdc"] == "SKIP"
    assert "give --lockout, then power-cycle" in text
    status, verdicts, text = run_kit(sim.port, password_file, "--lockout")
    assert status == 0 and verdicts["lockout"] == "PASS", text


# Each deliberate departure and the rules that must be named for it.
DEPARTURES = {
    "answers-damaged": {"damaged-request-dropped"},
    "unknown-needs-login": {"unknown-command"},
    "status-byte-ignored": {"status-byte"},
    "sync-answers-new-time": {"sync-answers-old-clock"},
    "battery-over-100": {"battery"},
    # the write is taken: the officer information then changed
    "zfy-accepts-letters": {"zfy-refuses-letters", "zfy-unchanged"},
    "slow-sync": {"answer-time"},
    "speaks-unasked": {"silent-when-idle"},
    "payload-ignored": {"empty-payload"},
}


def test_a_wrong_camera_is_named_for_each_departure(password_file: Path) -> None:
    camera = DocCamera(violations=frozenset(DEPARTURES), slow_s=0.45).start()
    try:
        status, verdicts, text = run_kit(camera.port, password_file)
    finally:
        camera.close()
    assert status == 1, text
    failed = {check for check, verdict in verdicts.items() if verdict == "FAIL"}
    assert failed == set().union(*DEPARTURES.values()), text
    # Everything else about this camera follows the document, and the kit says so.
    assert {v for c, v in verdicts.items() if c not in failed} <= {"PASS", "SKIP"}, text
    assert "FAIL  §6   answer-time: every answer completes within 0.3 s (command 0x06 took" \
        in text
    assert "FAIL  §4   battery: the battery is 0-100 % or FF (unknown) (answered 150)" in text


def test_a_camera_that_never_forgives_a_wrong_password_is_named(password_file: Path) -> None:
    camera = DocCamera(violations=frozenset({"no-failure-reset"})).start()
    try:
        status, verdicts, text = run_kit(camera.port, password_file)
    finally:
        camera.close()
    assert status == 1
    assert verdicts["right-password-resets"] == "FAIL", text
    assert "AUTH_FAILED, AUTH_FAILED, AUTH_FAILED, AUTH_FAILED, LOCKED" in text


def test_the_document_camera_conforms_and_warns_on_a_one_byte_battery(
        password_file: Path) -> None:
    camera = DocCamera().start()
    camera.charge = None  # an older firmware: percent only
    try:
        status, verdicts, text = run_kit(camera.port, password_file)
    finally:
        camera.close()
    assert status == 0, text
    assert verdicts["charge-state"] == "WARN", text
    assert {v for c, v in verdicts.items() if c != "charge-state"} <= {"PASS", "SKIP"}, text


def test_usage_errors_exit_2(tmp_path: Path, password_file: Path) -> None:
    open_file = tmp_path / "open.password"
    open_file.write_text("x\n", encoding="utf-8")
    open_file.chmod(0o644)
    status, _, text = run_kit("/dev/null", open_file)
    assert status == 2 and "chmod 600" in text
    status, _, text = run_kit(str(tmp_path / "no-such-port"), password_file)
    assert status == 2 and "cannot use" in text
    status, _, text = run_kit("/dev/null", password_file, "--lockout", "--switch")
    assert status == 2 and "not allowed with argument" in text
