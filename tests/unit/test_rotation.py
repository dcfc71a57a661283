"""``keys rotate``: clips sealed before and after a key rotation verify in one run.

The rotation statement is signed by both keys; a statement with a signature
missing, or by an unrelated key, or moved in the log, fails ``verify`` with
a named finding.  A rotation cut short by a crash is undone or finished at
the next start.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.pki import files as pki_files
from agent.pki import rotation
from agent.verify import verify_paths
from drivers.simcam import make_camera
from tests.conftest import write_station_config
from tests.support.bundle_readme import readme_script, run_bash


def _dock(tmp_path: Path, serial: str) -> None:
    make_camera(tmp_path / "sim", serial=serial, clips=2, seconds=0.5, width=160, height=120,
                fps=10.0)


def _run(config: Path) -> None:
    assert main(["run", "--once", "--config", str(config)]) == 0


def _keyid(tmp_path: Path) -> str:
    return StationKey.load(tmp_path / "data" / "keys" / "station.key").keyid


def _manifest_keys(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    try:
        rows = db.execute("SELECT manifest FROM clips ORDER BY sealed_at").fetchall()
    finally:
        db.close()
    return [json.loads(dsse.b64decode(json.loads(r[0])["payload"]))["station"]["key_id"]
            for r in rows]


def test_clips_sealed_before_and_after_a_rotation_verify_in_one_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_station_config(tmp_path)
    _dock(tmp_path, "CAM0001")
    _run(config)
    old = _keyid(tmp_path)
    old_key = (tmp_path / "data" / "keys" / "station.key").read_bytes()
    capsys.readouterr()
    assert main(["keys", "rotate", "--config", str(config), "--reason", "yearly rotation"]) == 0
    assert f"station key rotated: {old}" in capsys.readouterr().out
    new = _keyid(tmp_path)
    assert new != old
    archive = tmp_path / "data" / "keys" / "archive"
    assert (archive / f"{old}.key").read_bytes() == old_key, "the old key is kept"
    assert (archive / f"{old}.key").stat().st_mode & 0o777 == 0o600
    assert (archive / f"{old}.pem").exists()
    _dock(tmp_path, "CAM0002")
    _run(config)
    assert _manifest_keys(tmp_path) == [old, old, new, new]

    # The rotation statement: in the log, signed by both keys, at its position.
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    [(seq, body)] = db.execute(
        "SELECT seq, body FROM custody_log WHERE kind = 'key.rotated'").fetchall()
    envelope = json.loads(body)["statement"]
    statement = json.loads(dsse.b64decode(envelope["payload"]))
    assert statement == {"schema": "bwc.key-rotation/v1", "station_id": "ST-0001",
                         "old_keyid": old, "new_keyid": new, "at": statement["at"],
                         "reason": "yearly rotation", "log_size": seq - 1}
    assert [s["keyid"] for s in envelope["signatures"]] == [old, new]
    # Checkpoints: the old key signed up to the rotation, the new one from it on.
    signers = {size: json.loads(env)["signatures"][0]["keyid"]
               for size, env in db.execute("SELECT size, envelope FROM checkpoints")}
    assert {k for s, k in signers.items() if s < seq} == {old}
    assert {k for s, k in signers.items() if s >= seq} == {new}
    db.close()

    assert main(["verify", str(tmp_path / "data")]) == 0, capsys.readouterr().out
    bundle = tmp_path / "bundle"
    assert main(["export", "--all", "--config", str(config), "--out", str(bundle)]) == 0
    assert (bundle / "certs" / "keys" / f"{old}.pem").exists()
    assert b'"kind":"key.rotated"' in (bundle / "custody" / "entries.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["verify", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["clips"]) == 4 and all(c["ok"] for c in report["clips"])

    # The README's hand steps (openssl, sha256sum, python3) pass, rotation included.
    readme = (bundle / "README.txt").read_text()
    assert f"certs/keys/{old}.pem" in readme, "the example clip was signed by the old key"
    result = run_bash(readme_script(bundle), bundle)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    # The manifest (old key), the checkpoint (new key), the first earlier checkpoint (old
    # key), and each signature of the rotation statement.
    assert result.stdout.count("Signature Verified Successfully") == 5
    for expected in (line[3:] for line in readme.splitlines() if line.endswith("  -")):
        assert expected in result.stdout
    assert f"{old}  -" in result.stdout and f"{new}  -" in result.stdout


Forger = Callable[[StationKey, StationKey, bytes], list[dict[str, Any]]]


def _signature(key: StationKey, payload: bytes, keyid: str | None = None) -> dict[str, Any]:
    envelope = dsse.sign_envelope(dsse.KEY_ROTATION, payload, [key])
    return {"keyid": keyid or key.keyid, "sig": envelope["signatures"][0]["sig"]}


UNRELATED = StationKey.generate()
FORGERIES: dict[str, tuple[Forger, list[str]]] = {
    "old signature missing": (
        lambda old, new, p: [_signature(new, p)],
        ["no signature by the old key {old}; a rotation statement is signed by both keys"]),
    "new signature missing": (
        lambda old, new, p: [_signature(old, p)],
        ["no signature by the new key {new}"]),
    "unrelated key posing as the old one": (
        lambda old, new, p: [_signature(UNRELATED, p, old.keyid), _signature(new, p)],
        ["the signature by the old key {old} does not verify (altered, or made by another "
         "key)"]),
    "unrelated key beside the new one": (
        lambda old, new, p: [_signature(UNRELATED, p), _signature(new, p)],
        ["no signature by the old key {old}",
         f"signed by key {UNRELATED.keyid}, which is neither the old nor the new key"]),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_a_forged_rotation_statement_fails_verify_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    forge, templates = FORGERIES[case]
    expected: list[str] = []  # filled in once the keys are known (FORGERIES stays as it is)
    config = write_station_config(tmp_path)
    _dock(tmp_path, "CAM0001")
    _run(config)

    def forged(station_id: str, old: StationKey, new: StationKey, *, at: str, reason: str,
               log_size: int) -> dict[str, Any]:
        body = canonicalize({"schema": rotation.SCHEMA, "station_id": station_id,
                             "old_keyid": old.keyid, "new_keyid": new.keyid, "at": at,
                             "reason": reason, "log_size": log_size})
        expected[:] = [e.format(old=old.keyid, new=new.keyid) for e in templates]
        return {"payloadType": dsse.KEY_ROTATION,
                "payload": dsse.sign_envelope(dsse.KEY_ROTATION, body, [new])["payload"],
                "signatures": forge(old, new, body)}

    monkeypatch.setattr(rotation, "rotation_statement", forged)
    assert main(["keys", "rotate", "--config", str(config), "--reason", "forged"]) == 0
    _dock(tmp_path, "CAM0002")
    _run(config)
    bundle = tmp_path / "bundle"
    assert main(["export", "--all", "--config", str(config), "--out", str(bundle)]) == 0
    for target in (tmp_path / "data", bundle):
        report = verify_paths([target])
        assert not report.ok
        rotation_findings = [p for p in report.problems if p.startswith("rotation-")]
        assert rotation_findings, report.problems
        assert len(expected) == len(templates)
        for text in expected:
            assert any(p.startswith("rotation-signature:") and text in p
                       for p in rotation_findings), (text, rotation_findings)
        assert main(["verify", str(target)]) == 1


def test_a_rotation_statement_moved_in_the_log_fails_by_position(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_station_config(tmp_path)
    _dock(tmp_path, "CAM0001")
    _run(config)
    real = rotation.rotation_statement

    def moved(station_id: str, old: StationKey, new: StationKey, *, at: str, reason: str,
              log_size: int) -> dict[str, Any]:
        return real(station_id, old, new, at=at, reason=reason, log_size=1)

    monkeypatch.setattr(rotation, "rotation_statement", moved)
    assert main(["keys", "rotate", "--config", str(config), "--reason", "moved"]) == 0
    report = verify_paths([tmp_path / "data"])
    assert any(p.startswith("rotation-position:") and "the statement says the log held 1 "
               "entries before it" in p for p in report.problems), report.problems


def test_a_rotation_cut_short_is_undone_or_finished_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_station_config(tmp_path)
    _dock(tmp_path, "CAM0001")
    _run(config)
    old = _keyid(tmp_path)

    # Crash once the new files are staged, before the statement is logged: they are
    # thrown away at the next start, the old key stays.
    def crash_in_log(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("power cut")

    stage = pki_files.stage

    def stage_then_crash(*args: Any, **kwargs: Any) -> Any:
        stage(*args, **kwargs)
        raise KeyboardInterrupt("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(pki_files, "stage", stage_then_crash)
        with pytest.raises(KeyboardInterrupt):
            rotation.rotate_key(config_mod.load(config), reason="cut short")
    assert (tmp_path / "data" / "keys" / ".pending" / "commit.json").exists()
    _run(config)
    assert _keyid(tmp_path) == old
    assert not (tmp_path / "data" / "keys" / ".pending").exists()

    # Crash after the statement is logged, before the files are in place: finished.
    with monkeypatch.context() as patch:
        patch.setattr(pki_files.Pending, "apply", crash_in_log)
        with pytest.raises(KeyboardInterrupt):
            rotation.rotate_key(config_mod.load(config), reason="cut short")
    assert _keyid(tmp_path) == old, "not in place yet"
    _dock(tmp_path, "CAM0002")
    _run(config)
    new = _keyid(tmp_path)
    assert new != old
    assert _manifest_keys(tmp_path) == [old, old, new, new]
    assert main(["verify", str(tmp_path / "data")]) == 0


def test_keys_rotate_needs_a_station_that_ran(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write_station_config(tmp_path)
    assert main(["keys", "init", "--config", str(config)]) == 0
    assert main(["keys", "rotate", "--config", str(config), "--reason", "x"]) == 2
    assert "keys init --force` makes a new key" in capsys.readouterr().err
    _dock(tmp_path, "CAM0001")
    _run(config)
    assert main(["keys", "rotate", "--config", str(config), "--reason", "\x1b[31m"]) == 2
    assert "--reason: give 1 to 200 printable characters" in capsys.readouterr().err
