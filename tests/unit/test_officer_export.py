"""Export by a Chinese case number, verified end to end: ``bwc-agent verify`` and the README by hand.

The bundle carries the credentials and roster versions its clips name and
every tag entry; the installed ``bwc-agent verify`` checks each credential
(signature, validity at the recording time, revocation as of the roster the
station held and as of the bundle's newest), and prints per clip the officer,
the credential's status and the cases.  The README's commands are run as an
auditor would run them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config import Config
from agent.custody.keys import StationKey
from agent.errors import ConfigError
from agent.officers.bundle import case_path
from agent.store import Store
from scripts.devplatform.officers import OfficerAuthority, fields, revocation
from tests.support.bundle_readme import readme_script, run_bash
from tests.support.stations import camera, running_station
from tests.unit.test_officer_binding import import_roster

CHINESE = "内公(治)行罚决字〔2019〕123号"
BWC_AGENT = Path(sys.executable).parent / "bwc-agent"


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command, as an auditor runs it."""
    return subprocess.run([str(BWC_AGENT), "verify", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("station")
    authority = OfficerAuthority(base / "platform")
    (base / "sim").mkdir()
    config_path = base / "station.toml"
    config_path.write_text(
        f'[station]\nid = "ST-0001"\ndata_dir = "{base / "data"}"\n\n'
        f'[devices.simulated]\nroot = "{base / "sim"}"\n\n'
        f'[custody]\ncredential_key_file = "{authority.pub_path}"\n', encoding="utf-8")
    from agent import config as config_mod

    config: Config = config_mod.load(config_path)
    zhang = authority.credential("000001", "张三", credential_id="C-1")
    li = authority.credential("000002", "李四", credential_id="C-2")
    assert import_roster(config_path, authority.snapshot(1, [zhang, li], revoked=[
        revocation(li, "证件遗失")]), base) == 0
    camera(config, clips=2, serial="SIM0001", officer_id="000001")
    camera(config, clips=1, serial="SIM0002", officer_id="000002")
    camera(config, clips=1, serial="SIM0003", officer_id="000003")
    with running_station(config) as station:
        assert station.run_once().ok
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    clips = {r["device_serial"] + "/" + r["path"]: r["clip_id"] for r in store.clips()}
    by_serial: dict[str, list[str]] = {}
    for key, clip_id in sorted(clips.items()):
        by_serial.setdefault(key.split("/")[0], []).append(clip_id)
    zhang1, zhang2 = by_serial["SIM0001"]
    (li1,), (unknown1,) = by_serial["SIM0002"], by_serial["SIM0003"]
    tag = ["tag", "--config", str(config_path)]
    assert main([*tag, "--clip", zhang1, "--clip", li1, "--clip", unknown1,
                 "--case", CHINESE]) == 0
    assert main([*tag, "--clip", zhang2, "--case", "内公(治)行罚决字〔2019〕12号"]) == 0
    assert main([*tag, "--clip", zhang2, "--case", CHINESE, "--replace",
                 "内公(治)行罚决字〔2019〕12号"]) == 0
    assert main([*tag, "--clip", unknown1, "--case", "CASE-OTHER"]) == 0
    assert main([*tag, "--clip", unknown1, "--remove", "CASE-OTHER"]) == 0
    # Later, the platform revokes 张三's credential: the bundle shows it, the clips stay OK.
    assert import_roster(config_path, authority.update(2, 1, revoke=[revocation(zhang, "调离")]),
                         base, update=True) == 0
    out = base / f"导出-{CHINESE}"
    assert main(["export", "--config", str(config_path), "--case", CHINESE, "--out",
                 str(out)]) == 0
    store.close()
    return {"bundle": out, "authority": authority, "zhang": (zhang1, zhang2), "li": li1,
            "unknown": unknown1, "base": base}


@pytest.fixture
def bundle(exported: dict[str, Any], tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(exported["bundle"], copy)
    return copy


def test_export_by_chinese_case_verifies_with_bwc_agent(exported: dict[str, Any]) -> None:
    bundle: Path = exported["bundle"]
    authority: OfficerAuthority = exported["authority"]
    result = verify(str(bundle), "--officer-key", str(authority.pub_path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    clips = {c["clip_id"]: c for c in report["clips"]}
    zhang1, zhang2 = exported["zhang"]
    assert set(clips) == {zhang1, zhang2, exported["li"], exported["unknown"]}
    assert all(c["cases"] == [CHINESE] for c in clips.values())
    for clip_id in (zhang1, zhang2):
        officer = clips[clip_id]["officer"]
        assert (officer["id"], officer["name"], officer["credential_id"]) == (
            "000001", "张三", "C-1")
        assert officer["status"] == "valid" and officer["station_status"] == "valid"
        assert officer["roster_version"] == 1
        assert officer["revoked_since"]["reason"] == "调离"
    li = clips[exported["li"]]["officer"]
    assert (li["status"], li["station_status"], li["credential_id"]) == (
        "revoked", "revoked", "C-2")
    unknown = clips[exported["unknown"]]["officer"]
    assert unknown["status"] == unknown["station_status"] == "unknown-officer"
    assert any("C-1 was revoked later" in w for w in report["warnings"])

    text = verify(str(bundle), "--officer-key", str(authority.pub_path))
    assert text.returncode == 0, text.stdout
    assert "officer 000001 张三, credential C-1: valid (revoked since" in text.stdout
    assert f"officer 000002 李四, credential C-2: revoked; cases: {CHINESE}" in text.stdout
    assert f"officer 000003 张警官: unknown-officer; cases: {CHINESE}" in text.stdout
    # Without --officer-key the bundle's own key is used, with a warning to anchor it.
    unanchored = verify(str(bundle), "--json")
    assert unanchored.returncode == 0
    assert any("credential key officers/credential-key.pem is not anchored" in w
               for w in json.loads(unanchored.stdout)["warnings"])


def test_bundle_files_have_safe_names_and_are_bagged(exported: dict[str, Any]) -> None:
    bundle: Path = exported["bundle"]
    index = bundle / case_path(CHINESE)
    assert index.name.startswith("内公_治_行罚决字_2019_123号-") and index.is_file()
    listed = json.loads(index.read_text(encoding="utf-8"))
    assert listed["case_id"] == CHINESE and len(listed["clips"]) == 4
    assert (bundle / "officers" / "credentials").is_dir()
    names = {p.name for p in (bundle / "officers" / "credentials").iterdir()}
    assert names == {n for n in names if n.endswith(".dsse.json")} and len(names) == 2
    for path in bundle.rglob("*"):
        assert not set(path.name) & set(" ()〔〕'\"$`\\;&|<>*?"), path
    tags = (bundle / "tagmanifest-sha256.txt").read_text(encoding="utf-8")
    for rel in ("officers/rosters.jsonl", "officers/credential-key.pem",
                case_path(CHINESE)):
        assert f"  {rel}\n" in tags
    rosters = [json.loads(line) for line in
               (bundle / "officers" / "rosters.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["version"]) for r in rosters] == [("snapshot", 1), ("update", 2)]
    check = subprocess.run(["sha256sum", "-c", "--quiet", "tagmanifest-sha256.txt"],
                           cwd=bundle, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_readme_hand_steps_verify_the_officer_and_the_case(bundle: Path) -> None:
    script = readme_script(bundle)
    result = run_bash(script, bundle)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = result.stdout
    # Manifest, checkpoint, first earlier checkpoint, credential and roster signatures.
    assert out.count("Signature Verified Successfully") == 5
    assert "recorded within the credential's validity: yes" in out
    assert "lists credential C-1 with its SHA-256: yes" in out
    assert "revoked by version 1 : no" in out
    assert f"{CHINESE}\n" in out
    assert "is in the signed log" in out and "tag entry" in out
    readme = (bundle / "README.txt").read_text(encoding="utf-8")
    for expected in (line[3:] for line in readme.splitlines() if line.endswith("  -")):
        assert expected in out
    # The same steps fail on a credential edited after export.
    path = next((bundle / "officers" / "credentials").glob("C-1-*"))
    envelope = json.loads(path.read_text())
    doc = fields(envelope)
    doc["not_after"] = "2099-01-01T00:00:00.000Z"
    envelope["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    path.write_text(json.dumps(envelope))
    no_bagit = script.replace("sha256sum -c tagmanifest-sha256.txt\n", "")
    failed = run_bash(no_bagit, bundle)
    assert failed.returncode != 0
    assert "Signature Verification Failure" in failed.stdout + failed.stderr


def test_tampered_officer_files_fail_verification(bundle: Path,
                                                  exported: dict[str, Any]) -> None:
    authority: OfficerAuthority = exported["authority"]
    zhang1, _ = exported["zhang"]
    # A credential re-signed by another key: it is not the credential the signed roster
    # lists, and the clips that claim 张三 verified fail.
    path = next((bundle / "officers" / "credentials").glob("C-1-*"))
    other = OfficerAuthority(bundle.parent / "forger")
    forged = other.credential("000001", "张三", credential_id="C-1")
    path.write_text(json.dumps(forged))
    # The case index claims a clip is not in the case.
    index_path = bundle / case_path(CHINESE)
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["clips"] = index["clips"][1:]
    index_path.write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
    result = verify(str(bundle), "--officer-key", str(authority.pub_path), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    clip = next(c for c in report["clips"] if c["clip_id"] == zhang1)
    assert any(p.startswith("officer-credential:") and "does not list this credential" in p
               for p in clip["problems"]), clip["problems"]
    assert any(p.startswith("case-index:") for p in report["problems"])
    # A credential key other than the platform's.
    wrong = bundle.parent / "wrong.pem"
    wrong.write_bytes(StationKey.generate().public_pem())
    mismatch = verify(str(bundle), "--officer-key", str(wrong), "--json")
    assert any(p.startswith("officer-key:") for p in json.loads(mismatch.stdout)["problems"])


def test_a_removed_tag_entry_is_caught(bundle: Path, exported: dict[str, Any]) -> None:
    # The correction of 张三's second clip refers to the tag it corrects; drop that tag
    # (and its proof) and the correction refers to nothing.
    entries = (bundle / "custody" / "entries.jsonl").read_bytes().splitlines()
    _, zhang2 = exported["zhang"]
    first_tag = next(i for i, line in enumerate(entries)
                     if json.loads(line)["kind"] == "clip.tagged"
                     and json.loads(line)["clip_id"] == zhang2)
    seq = json.loads(entries[first_tag])["seq"]
    del entries[first_tag]
    (bundle / "custody" / "entries.jsonl").write_bytes(b"\n".join(entries) + b"\n")
    proofs = json.loads((bundle / "custody" / "proofs.json").read_text())
    proofs["entries"] = [p for p in proofs["entries"] if p["seq"] != seq]
    (bundle / "custody" / "proofs.json").write_text(json.dumps(proofs))
    result = verify(str(bundle), "--json")
    report = json.loads(result.stdout)
    clip = next(c for c in report["clips"] if c["clip_id"] == zhang2)
    assert any(p.startswith("log-tag:") and f"referring to seq {seq}" in p
               for p in clip["problems"]), clip["problems"]


def test_config_reads_the_officers_section_by_key_path(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[officers]\nhold_release_until_verified = true\n"
                            "time_tolerance_s = 30\n")
    assert config.officers.hold_release_until_verified is True
    assert config.officers.time_tolerance_s == 30
    with pytest.raises(ConfigError) as refused:
        station_config("[officers]\ntime_tolerance_s = -1\nhold = 1\n")
    assert any(p.startswith("officers.time_tolerance_s:") for p in refused.value.problems)
    assert any(p.startswith("officers.hold:") for p in refused.value.problems)


def test_the_bundled_credential_key_checked_is_the_key_used(
        bundle: Path, exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the bundle's credential key is read once, as a regular file, and those bytes are
    the key the credentials are checked with; a key swapped in under the same name after
    that read (a link to a forger's key) is never opened."""
    from agent.custody.keys import keyid_of, load_public_key
    from agent.officers import audit
    from agent.verify import verify_paths

    authority: OfficerAuthority = exported["authority"]
    forger = OfficerAuthority(bundle.parent / "forger")
    original_read = audit._Audit.read

    def read_then_swap(self: Any, rel: str) -> bytes | None:
        data = original_read(self, rel)
        if rel == "officers/credential-key.pem":
            (bundle / rel).unlink()
            (bundle / rel).symlink_to(forger.pub_path)
        return data

    monkeypatch.setattr(audit._Audit, "read", read_then_swap)
    report = verify_paths([bundle]).as_dict()
    authority_keyid = keyid_of(load_public_key(authority.pub_path))
    assert any(f"its key id is {authority_keyid}" in w for w in report["warnings"]), \
        report["warnings"]
    zhang1, _ = exported["zhang"]
    officer = next(c for c in report["clips"] if c["clip_id"] == zhang1)["officer"]
    assert (officer["credential_id"], officer["status"]) == ("C-1", "valid")


def test_a_bundled_credential_key_that_is_not_a_key_is_named(bundle: Path) -> None:
    """Rule: a credential key file that holds no PEM key is an officer-key finding naming
    the bundle's file (not the auditor's path to it)."""
    (bundle / "officers" / "credential-key.pem").write_bytes(b"not a key\n")
    result = verify(str(bundle), "--json")
    problems = json.loads(result.stdout)["problems"]
    assert result.returncode == 1
    assert any(p.startswith("officer-key: officers/credential-key.pem is neither a PEM "
                            "public key nor a PEM certificate") for p in problems), problems
