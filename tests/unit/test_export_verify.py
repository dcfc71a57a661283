"""Export bundles and offline verification, on a real sealed station with real OpenCV clips.

One station is built per module (simulated camera, Station.run_once, case tags
so that there are several checkpoints); one pristine bundle is exported from
it.  Every test tampers with its own copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from agent import config as config_mod
from agent.cli.main import main
from agent.config import Config
from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.devpki import DevCA
from agent.errors import IntegrityError
from agent.export import export_bundle, select_clips
from agent.station import Station
from agent.store import Store
from agent.vault import Vault
from agent.verify import Report, verify_paths
from agent.verify.layout import safe_name
from drivers.simcam import DEFAULT_CATALOG, make_camera
from tests.support.bundle_readme import readme_script, run_bash
from tests.support.certificates import ca_since_yesterday, issued_a_day_ago
from tests.support.templates import built_once

CLIPS = 8


@dataclass
class SealedStation:
    base: Path
    config: Config
    config_path: Path
    clip_ids: list[str]  # the exported clips, in clip_id order
    bundle: Path  # pristine export of all of them (read-only for tests: copy it)
    duplicate_id: str  # a clip that was never sealed (same bytes as another)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir


def _write_config(base: Path, data_dir: Path, name: str = "station.toml") -> Path:
    path = base / name
    path.write_text(
        f'[station]\nid = "ST-0001"\ndata_dir = "{data_dir}"\n\n'
        f'[devices.simulated]\nroot = "{base / "sim"}"\ncatalog = "{DEFAULT_CATALOG}"\n',
        encoding="utf-8")
    return path


def _run_station(config: Config) -> None:
    station = Station(config)
    station.start(watch=False)
    try:
        summary = station.run_once()
        assert summary.ok, summary.failures
    finally:
        station.stop()


@pytest.fixture(scope="module")
def sealed_station(tmp_path_factory: pytest.TempPathFactory) -> SealedStation:
    base = built_once("export-verify", tmp_path_factory, _build_sealed_station)
    config_path = base / "station.toml"
    facts = json.loads((base / "facts.json").read_text(encoding="utf-8"))
    return SealedStation(base=base, config=config_mod.load(config_path),
                         config_path=config_path, clip_ids=facts["clip_ids"],
                         bundle=base / "bundle", duplicate_id=facts["duplicate_id"])


def _build_sealed_station(base: Path) -> None:
    (base / "sim").mkdir()
    raw = {"station": {"id": "ST-0001", "data_dir": str(base / "data")},
           "devices": {"simulated": {"root": str(base / "sim"),
                                     "catalog": str(DEFAULT_CATALOG)}}}
    config = config_mod.parse(raw, base)
    config_path = _write_config(base, base / "data")
    camera = make_camera(base / "sim", clips=CLIPS, seconds=0.5, width=160, height=120,
                         fps=10.0)
    _run_station(config)
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    clip_ids = [r["clip_id"] for r in store.clips()]
    store.close()
    assert len(clip_ids) == CLIPS
    # Two tags: the first is covered by the checkpoint the daemon signs when it stops,
    # the second by none, so the export must sign one (and carry the earlier ones).
    assert main(["tag", "--config", str(config_path), "--clip", clip_ids[0],
                 "--case", "CASE-7"]) == 0
    _run_station(config)
    assert main(["tag", "--config", str(config_path), "--clip", clip_ids[1],
                 "--case", "CASE-7"]) == 0
    bundle = base / "bundle"
    assert main(["export", "--config", str(config_path), "--all", "--out", str(bundle)]) == 0

    # A second camera holding a copy of one clip: ingested as a duplicate, never sealed.
    clip_file = sorted(p for p in camera.rglob("*") if p.suffix in (".MP4", ".AVI"))[0]
    twin = base / "staging" / "SIM0002"
    (twin / "DCIM").mkdir(parents=True)
    identity = json.loads((camera / "BWC_DEVICE.json").read_text(encoding="utf-8"))
    identity["serial"] = "SIM0002"
    (twin / "BWC_DEVICE.json").write_text(json.dumps(identity), encoding="utf-8")
    shutil.copy2(clip_file, twin / "DCIM" / clip_file.name)
    os.rename(twin, base / "sim" / "SIM0002")
    _run_station(config)
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    duplicate = [r["clip_id"] for r in store.clips() if r["state"] == "duplicate"]
    store.close()
    assert len(duplicate) == 1
    (base / "facts.json").write_text(json.dumps({"clip_ids": clip_ids,
                                                 "duplicate_id": duplicate[0]}),
                                     encoding="utf-8")


@pytest.fixture
def bundle(sealed_station: SealedStation, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(sealed_station.bundle, copy)
    return copy


# --- helpers -----------------------------------------------------------------------------

def _clip_file(bundle: Path, clip_id: str) -> Path:
    (path,) = (bundle / "data" / "clips" / clip_id).iterdir()
    return path


def _manifest(bundle: Path, clip_id: str) -> Path:
    return bundle / "data" / "manifests" / f"{clip_id}.dsse.json"


def _clip(report: Report, clip_id: str) -> Any:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return result


def _codes(problems: list[str]) -> set[str]:
    return {p.split(":", 1)[0] for p in problems}


def _entries(bundle: Path) -> list[bytes]:
    return (bundle / "custody" / "entries.jsonl").read_bytes().splitlines()


def _write_entries(bundle: Path, lines: list[bytes]) -> None:
    (bundle / "custody" / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def _station_key(station: SealedStation) -> StationKey:
    return StationKey.load(station.data_dir / "keys" / "station.key")


# --- the tampering cases: each returns the clip it damaged (None: a general finding) -----

def flip_clip_byte(bundle: Path, station: SealedStation) -> str | None:
    clip_id = station.clip_ids[0]
    path = _clip_file(bundle, clip_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return clip_id


def truncate_clip(bundle: Path, station: SealedStation) -> str | None:
    clip_id = station.clip_ids[1]
    path = _clip_file(bundle, clip_id)
    path.write_bytes(path.read_bytes()[:-1000])
    return clip_id


def edit_manifest_payload(bundle: Path, station: SealedStation) -> str | None:
    clip_id = station.clip_ids[2]
    path = _manifest(bundle, clip_id)
    envelope = json.loads(path.read_text(encoding="utf-8"))
    manifest = json.loads(base64.b64decode(envelope["payload"]))
    manifest["case_id"] = "FORGED-1"
    envelope["payload"] = base64.b64encode(canonicalize(manifest)).decode()
    path.write_text(json.dumps(envelope), encoding="utf-8")
    return clip_id


def sign_with_other_key(bundle: Path, station: SealedStation) -> str | None:
    clip_id = station.clip_ids[3]
    path = _manifest(bundle, clip_id)
    envelope = json.loads(path.read_text(encoding="utf-8"))
    payload = base64.b64decode(envelope["payload"])
    forged = dsse.sign_envelope(dsse.MANIFEST, payload, [StationKey.generate()])
    path.write_text(json.dumps(forged), encoding="utf-8")
    return clip_id


def remove_log_entry(bundle: Path, station: SealedStation) -> str | None:
    """Drop a clip's clip.copied entry and its proof, as a careful forger would."""
    clip_id = station.clip_ids[4]
    lines = _entries(bundle)
    victim = next(line for line in lines if json.loads(line)["clip_id"] == clip_id
                  and json.loads(line)["kind"] == "clip.copied")
    seq = json.loads(victim)["seq"]
    _write_entries(bundle, [line for line in lines if line != victim])
    proofs_path = bundle / "custody" / "proofs.json"
    proofs = json.loads(proofs_path.read_text(encoding="utf-8"))
    proofs["entries"] = [p for p in proofs["entries"] if p["seq"] != seq]
    proofs_path.write_text(json.dumps(proofs), encoding="utf-8")
    return clip_id


def reorder_log_entries(bundle: Path, station: SealedStation) -> str | None:
    clip_id = station.clip_ids[5]
    lines = _entries(bundle)
    mine = [i for i, line in enumerate(lines) if json.loads(line)["clip_id"] == clip_id]
    first, last = mine[0], mine[-1]
    lines[first], lines[last] = lines[last], lines[first]
    _write_entries(bundle, lines)
    return clip_id


def renumber_log_entries(bundle: Path, station: SealedStation) -> str | None:
    """Swap the seq numbers of two entries, keeping the file in seq order."""
    clip_id = station.clip_ids[5]
    lines = _entries(bundle)
    mine = [i for i, line in enumerate(lines) if json.loads(line)["clip_id"] == clip_id]
    a, b = json.loads(lines[mine[1]]), json.loads(lines[mine[2]])
    a["seq"], b["seq"] = b["seq"], a["seq"]
    lines[mine[1]], lines[mine[2]] = canonicalize(b), canonicalize(a)
    _write_entries(bundle, lines)
    return clip_id


def fork_earlier_checkpoint(bundle: Path, station: SealedStation) -> str | None:
    """An earlier checkpoint, validly signed by the station, of a log the newest does not extend."""
    path = bundle / "custody" / "checkpoints.jsonl"
    items = [json.loads(line) for line in path.read_bytes().splitlines()]
    old = items[0]
    forked_root = merkle.root([merkle.leaf_hash(b"another history %d" % i)
                               for i in range(old["size"])]).hex()
    body = {"station_id": "ST-0001", "size": old["size"], "root": forked_root,
            "at": old["at"]}
    old["envelope"] = dsse.sign_envelope(dsse.CHECKPOINT, canonicalize(body),
                                         [_station_key(station)])
    old["root"] = forked_root
    path.write_bytes(b"".join(json.dumps(i).encode() + b"\n" for i in items))
    return None


def delete_manifest_file(bundle: Path, station: SealedStation) -> str | None:
    clip_id = station.clip_ids[6]
    _manifest(bundle, clip_id).unlink()
    return clip_id


Tamper = Callable[[Path, SealedStation], "str | None"]
CASES: list[tuple[Tamper, set[str]]] = [
    (flip_clip_byte, {"file-digest", "bag-digest"}),
    (truncate_clip, {"file-size", "file-digest", "bag-digest"}),
    (edit_manifest_payload, {"signature", "log-link"}),
    (sign_with_other_key, {"signature"}),
    (remove_log_entry, {"log-history"}),
    (reorder_log_entries, {"log-order", "log-history"}),
    (fork_earlier_checkpoint, {"checkpoint-consistency"}),
    (delete_manifest_file, {"manifest-missing", "bag-missing"}),
]


# --- tests -------------------------------------------------------------------------------

def test_clean_bundle_verifies_via_cli(sealed_station: SealedStation, bundle: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert text.count(": OK") == CLIPS
    assert "VERIFIED: 8 clip(s) OK" in text
    assert main(["verify", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["problems"] == []
    assert sorted(c["clip_id"] for c in report["clips"]) == sorted(sealed_station.clip_ids)
    assert all(c["ok"] and c["problems"] == [] and c["state"] == "sealed"
               for c in report["clips"])
    assert any("self-signed / not anchored" in w for w in report["warnings"])
    assert report["targets"] == [{"path": str(bundle), "kind": "bundle"}]


def test_bundle_layout_and_proofs(sealed_station: SealedStation, bundle: Path) -> None:
    assert (bundle / "bagit.txt").read_text() == ("BagIt-Version: 1.0\n"
                                                  "Tag-File-Character-Encoding: UTF-8\n")
    info = (bundle / "bag-info.txt").read_text()
    payload = [p for p in bundle.joinpath("data").rglob("*") if p.is_file()]
    assert f"Payload-Oxum: {sum(p.stat().st_size for p in payload)}.{2 * CLIPS}\n" in info
    assert "Source-Organization: bwc-agent station ST-0001\n" in info
    assert "Bag-Count: 1 of 1\n" in info
    listed = {line.split("  ", 1)[1] for line in
              (bundle / "manifest-sha256.txt").read_text().splitlines()}
    assert listed == {p.relative_to(bundle).as_posix() for p in payload}
    tags = {line.split("  ", 1)[1] for line in
            (bundle / "tagmanifest-sha256.txt").read_text().splitlines()}
    assert {"custody/entries.jsonl", "custody/proofs.json", "custody/checkpoint.dsse.json",
            "custody/checkpoints.jsonl", "certs/station.pem", "README.txt", "bagit.txt",
            "bag-info.txt", "manifest-sha256.txt"} <= tags
    assert (bundle / "certs" / "station.pem").read_bytes() == \
        (sealed_station.data_dir / "keys" / "station.pem").read_bytes()

    # The clip's bytes are the vault's; its manifest keeps the true name.
    store = Store(sealed_station.data_dir / "state.db", station_id="ST-0001", readonly=True)
    row = store.clip(sealed_station.clip_ids[0])
    assert _clip_file(bundle, row["clip_id"]).name == safe_name(row["name"]) == row["name"]
    assert _clip_file(bundle, row["clip_id"]).read_bytes() == \
        Vault(sealed_station.data_dir / "vault").path_for(row["sha256"]).read_bytes()

    # Every entry of the exported clips, each line its own JCS, in seq order, all proven
    # against the checkpoint that the export had to sign (the second tag was uncovered).
    stored = store.query("SELECT seq FROM custody_log WHERE clip_id IS NOT NULL AND "
                         "clip_id != ? ORDER BY seq", (sealed_station.duplicate_id,))
    lines = _entries(bundle)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [r["seq"] for r in stored]
    assert all(canonicalize(e) == line for e, line in zip(entries, lines, strict=True))
    head = json.loads(base64.b64decode(json.loads(
        (bundle / "custody" / "checkpoint.dsse.json").read_text())["payload"]))
    tagged = [e for e in entries if e["kind"] == "clip.tagged"]
    assert len(tagged) == 2 and head["size"] >= tagged[-1]["seq"]
    newest = store.query_one("SELECT MAX(size) AS n FROM checkpoints WHERE size <= ?",
                             (head["size"],))
    assert newest is not None and newest["n"] == head["size"]
    proofs = json.loads((bundle / "custody" / "proofs.json").read_text())
    assert [p["leaf_index"] for p in proofs["entries"]] == [e["seq"] - 1 for e in entries]
    for entry, proof in zip(entries, proofs["entries"], strict=True):
        leaf = merkle.leaf_hash(canonicalize(entry))
        path = [bytes.fromhex(h) for h in proof["inclusion_proof"]]
        assert merkle.verify_inclusion(leaf, entry["seq"] - 1, head["size"], path,
                                       bytes.fromhex(head["root"]))
    earlier = [json.loads(line) for line in
               (bundle / "custody" / "checkpoints.jsonl").read_bytes().splitlines()]
    assert len(earlier) >= 2 and all(c["size"] < head["size"] for c in earlier)
    for item in earlier:
        assert merkle.verify_consistency(
            item["size"], head["size"], bytes.fromhex(item["root"]),
            bytes.fromhex(head["root"]), [bytes.fromhex(h) for h in item["consistency_proof"]])
    store.close()


def test_readme_commands_work_by_hand(bundle: Path) -> None:
    script = readme_script(bundle)
    assert "sha256sum -c manifest-sha256.txt" in script
    assert "openssl pkeyutl -verify -pubin" in script and "-rawin" in script
    result = run_bash(script, bundle)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The manifest, the newest checkpoint and the first earlier one (checkpoints.jsonl).
    assert out.count("Signature Verified Successfully") == 3
    payload_lines = (bundle / "manifest-sha256.txt").read_text().splitlines()
    assert out.count(": OK\n") >= len(payload_lines) + 9
    assert "clip matches its signed manifest" in out
    assert "is in the signed log" in out
    assert out.count("is a prefix of size") == out.count(": True") == 2
    # The README states the key id and leaf hash it expects; the commands print them.
    readme = (bundle / "README.txt").read_text()
    for expected in (line[3:] for line in readme.splitlines() if line.endswith("  -")):
        assert expected in out

    # The same commands fail on a damaged bundle: they check something.
    example = readme.split("worked example uses clip ", 1)[1][:36]
    manifest = _manifest(bundle, example)
    envelope = json.loads(manifest.read_text())
    doc = json.loads(base64.b64decode(envelope["payload"]))
    doc["file"]["size"] += 1
    envelope["payload"] = base64.b64encode(canonicalize(doc)).decode()
    manifest.write_text(json.dumps(envelope))
    no_bagit = script.replace("sha256sum -c manifest-sha256.txt\n", "")
    failed = run_bash(no_bagit, bundle)
    assert failed.returncode != 0
    assert "Signature Verification Failure" in failed.stdout + failed.stderr


def test_readme_consistency_check_catches_a_forked_checkpoint(
        sealed_station: SealedStation, bundle: Path) -> None:
    script = readme_script(bundle)
    start = script.index("python3 - <<'EOF'\nimport base64, hashlib, json, sys\nnode")
    step7 = script[start:script.index("\nEOF\n", start) + 5]
    clean = run_bash(step7, bundle)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.count(": True") == 2
    fork_earlier_checkpoint(bundle, sealed_station)
    forked = run_bash(step7, bundle)
    assert forked.returncode == 1
    assert forked.stdout.count(": False") == 1 and forked.stdout.count(": True") == 1


def test_every_tampering_is_detected_in_one_run(sealed_station: SealedStation, bundle: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    damaged = {tamper.__name__: (tamper(bundle, sealed_station), codes)
               for tamper, codes in CASES}
    assert main(["verify", str(bundle), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    by_id = {c["clip_id"]: c for c in report["clips"]}
    for name, (clip_id, codes) in damaged.items():
        if clip_id is None:
            assert codes <= _codes(report["problems"]), (name, report["problems"])
        else:
            assert not by_id[clip_id]["ok"], name
            assert codes <= _codes(by_id[clip_id]["problems"]), (name, by_id[clip_id])
    # The one clip nobody touched still verifies, and says so.
    untouched = by_id[sealed_station.clip_ids[7]]
    assert untouched["ok"] and untouched["problems"] == []
    # A few findings in full: they name what is wrong.
    flipped = by_id[sealed_station.clip_ids[0]]["problems"]
    assert any(p.startswith("file-digest: file SHA-256 is") for p in flipped)
    other_key = by_id[sealed_station.clip_ids[3]]["problems"]
    assert any("keyid is not among the 1 trusted key(s)" in p for p in other_key)
    assert any("is not a prefix of the newest" in p for p in report["problems"])
    assert any(p.startswith("bag-oxum:") for p in report["problems"])
    # Text form: one verdict line per clip.
    assert main(["verify", str(bundle)]) == 1
    text = capsys.readouterr().out
    assert text.count(": FAILED: ") == 7 and text.count(": OK") == 1
    assert "NOT VERIFIED: 7 of 8 clip(s) failed" in text


@pytest.mark.parametrize(("tamper", "codes"), [*CASES, (renumber_log_entries,
                                                         {"log-leaf", "log-inclusion"})],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_each_tampering_alone_fails_only_its_clip(sealed_station: SealedStation, bundle: Path,
                                                 tamper: Tamper, codes: set[str]) -> None:
    clip_id = tamper(bundle, sealed_station)
    report = verify_paths([bundle])
    assert not report.ok
    failed = {c.clip_id for c in report.clips if not c.ok}
    if clip_id is None:
        assert codes <= _codes(report.problems)
        assert failed == set()
    else:
        assert failed == {clip_id}
        assert codes <= _codes(_clip(report, clip_id).problems)


def test_missing_tag_file_is_named(bundle: Path) -> None:
    (bundle / "custody" / "checkpoints.jsonl").unlink()
    report = verify_paths([bundle])
    assert "bag-missing: custody/checkpoints.jsonl is listed in tagmanifest-sha256.txt but " \
           "missing from the bundle" in report.problems
    assert any(p.startswith("checkpoint-missing:") for p in report.problems)


def test_ca_issued_station_chains_to_trust_and_exports_its_ca(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sealed_station.data_dir, data)
    ca = ca_since_yesterday(tmp_path / "ca")
    cert = issued_a_day_ago(ca, _station_key(sealed_station), "ST-0001")
    (data / "keys" / "station.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shutil.copy(ca.cert_path, data / "keys" / "platform-ca.pem")
    shutil.copy(ca.key_path, data / "keys" / "stray.pem")  # a private key: never exported
    config = config_mod.load(_write_config(tmp_path, data))
    store = Store(data / "state.db", station_id="ST-0001")
    try:
        result = export_bundle(config, store, Vault(data / "vault"),
                               select_clips(store, clip_refs=sealed_station.clip_ids[:1]),
                               tmp_path / "out")
    finally:
        store.close()
    assert sorted(p.name for p in (result.path / "certs").iterdir()) == \
        ["platform-ca.pem", "station.pem"]
    anchored = verify_paths([result.path, data], trust=ca.cert_path)
    assert anchored.ok, (anchored.problems, [c.problems for c in anchored.clips])
    assert not any("not anchored" in w for w in anchored.warnings)
    other = DevCA(tmp_path / "other-ca", name="someone else's CA")
    wrong = verify_paths([result.path], trust=other.cert_path)
    assert any(p.startswith("cert-invalid:") and "not among the 1 trust anchor(s)" in p
               for p in wrong.problems)
    assert main(["verify", str(result.path), "--trust", str(other.cert_path)]) == 1


def test_data_dir_verifies_and_detects_a_corrupted_vault_object(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    clean = verify_paths([sealed_station.data_dir])
    assert clean.ok, (clean.problems, [c for c in clean.clips if not c.ok])
    states = {c.clip_id: c.state for c in clean.clips}
    assert states[sealed_station.duplicate_id] == "duplicate"
    assert len(clean.clips) == CLIPS + 1

    data = tmp_path / "data"
    shutil.copytree(sealed_station.data_dir, data)
    store = Store(data / "state.db", station_id="ST-0001", readonly=True)
    # Not the clip whose bytes the duplicate shares: that object would fail both.
    twin_sha = store.clip(sealed_station.duplicate_id)["sha256"]
    row = next(r for r in map(store.clip, sealed_station.clip_ids) if r["sha256"] != twin_sha)
    store.close()
    obj = Vault(data / "vault").path_for(row["sha256"])
    obj.chmod(0o644)
    raw = bytearray(obj.read_bytes())
    raw[100] ^= 0xFF
    obj.write_bytes(bytes(raw))
    assert main(["verify", str(data)]) == 1
    report = verify_paths([data])
    failed = [c for c in report.clips if not c.ok]
    assert [c.clip_id for c in failed] == [row["clip_id"]]
    (problem,) = [p for p in failed[0].problems if p.startswith("vault-digest:")]
    assert f"vault object {row['sha256']} reads back as" in problem


def test_data_dir_detects_an_edited_and_a_removed_log_entry(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sealed_station.data_dir, data)
    conn = sqlite3.connect(data / "state.db")
    target = sealed_station.clip_ids[3]
    conn.execute("UPDATE custody_log SET body = '{\"case_id\": \"FORGED\"}' WHERE seq = ("
                 "SELECT MAX(seq) FROM custody_log WHERE clip_id = ?)", (target,))
    conn.execute("DELETE FROM custody_log WHERE seq = (SELECT MAX(seq) FROM custody_log)")
    conn.commit()
    conn.close()
    report = verify_paths([data])
    assert any(p.startswith("log-leaf:") for p in _clip(report, target).problems)
    assert "checkpoint-root" in _codes(report.problems)
    assert "checkpoint-beyond" in _codes(report.problems)


def test_clip_and_manifest_pair(sealed_station: SealedStation, bundle: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    clip_id = sealed_station.clip_ids[5]
    clip, manifest = _clip_file(bundle, clip_id), _manifest(bundle, clip_id)
    cert = bundle / "certs" / "station.pem"
    assert main(["verify", str(clip), str(manifest), "--cert", str(cert)]) == 0
    assert f"{clip_id}  {clip.name}: OK" in capsys.readouterr().out
    assert main(["verify", str(clip), str(manifest)]) == 2
    assert "--cert station.pem" in capsys.readouterr().err
    flip_clip_byte_at(clip)
    assert main(["verify", str(clip), str(manifest), "--cert", str(cert), "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)["clips"]
    assert result["clip_id"] == clip_id and not result["ok"]
    assert _codes(result["problems"]) == {"file-digest"}


def flip_clip_byte_at(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_export_refuses_a_non_empty_out_dir(sealed_station: SealedStation, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["export", "--config", str(sealed_station.config_path), "--clip",
                 sealed_station.clip_ids[0], "--out", str(out)])
    assert code == 2
    assert f"--out {out}: directory is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_export_into_an_empty_dir_by_clip_prefix(sealed_station: SealedStation,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    wanted = sealed_station.clip_ids[2:4]
    assert main(["export", "--config", str(sealed_station.config_path), "--clip",
                 wanted[0][:30], wanted[1], "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "data" / "clips").iterdir()) == sorted(wanted)
    assert verify_paths([out]).ok
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_export_refuses_unknown_and_unsealed_clips(sealed_station: SealedStation,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    cfg = str(sealed_station.config_path)
    code = main(["export", "--config", cfg, "--clip", sealed_station.clip_ids[0],
                 "nope-1", "ffffffff", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 clip id(s) not found" in err
    assert "no clip with id 'nope-1'" in err and "no clip with id 'ffffffff'" in err
    assert not out.exists()

    dup = sealed_station.duplicate_id
    assert main(["export", "--config", cfg, "--clip", dup, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{dup} " in err and "duplicate of another clip" in err
    assert main(["export", "--config", cfg, "--all", "--out", str(out)]) == 2
    assert "--skip-unsealed" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", "--config", cfg, "--all", "--skip-unsealed", "--out",
                 str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["clips"]) == sorted(sealed_station.clip_ids)


def test_export_by_case(sealed_station: SealedStation, tmp_path: Path) -> None:
    store = Store(sealed_station.data_dir / "state.db", station_id="ST-0001")
    try:
        rows = select_clips(store, case_id="CASE-7")
        assert [r["clip_id"] for r in rows] == sorted(sealed_station.clip_ids[:2])
        result = export_bundle(sealed_station.config, store,
                               Vault(sealed_station.data_dir / "vault"), rows,
                               tmp_path / "case7")
    finally:
        store.close()
    assert result.clip_ids == [r["clip_id"] for r in rows]
    assert verify_paths([result.path]).ok


def test_export_checks_vault_bytes_against_the_manifest(sealed_station: SealedStation,
                                                        tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sealed_station.data_dir, data)
    config = config_mod.load(_write_config(tmp_path, data))
    store = Store(data / "state.db", station_id="ST-0001")
    try:
        rows = select_clips(store, all_clips=True, skip_unexportable=True)
        victim = rows[-1]
        obj = Vault(data / "vault").path_for(victim["sha256"])
        obj.chmod(0o644)
        obj.write_bytes(obj.read_bytes()[:-1] + b"X")
        seen: list[tuple[int, int]] = []
        with pytest.raises(IntegrityError, match=f"clip {victim['clip_id']}: the vault copy"):
            export_bundle(config, store, Vault(data / "vault"), rows, tmp_path / "out",
                          progress=lambda done, total: seen.append((done, total)))
    finally:
        store.close()
    assert seen and seen[-1][1] == sum(r["size"] for r in rows)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.export-")]


@pytest.mark.parametrize(("name", "expected"), [
    ("SIM0001_000001_20240101_0001.MP4", "SIM0001_000001_20240101_0001.MP4"),
    ("../../etc/passwd", "_._.._etc_passwd"),
    (".hidden.mp4", "_hidden.mp4"),
    ("a\nb\x00c\u202e.mp4", "a_b_c_.mp4"),
    ("执法 记录(1).avi", "执法_记录_1_.avi"),
    ("", "clip"),
])
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected
    long = safe_name("x" * 300 + ".MP4")
    assert long.endswith(".MP4") and len(long.encode()) == 200


def test_verify_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "absent")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert "neither an export bundle" in capsys.readouterr().err


# --- a data directory's log, checkpoints and vault, each finding word for word ---------------

def _data_copy(sealed_station: SealedStation, tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    data = tmp_path / "data"
    shutil.copytree(sealed_station.data_dir, data)
    return data, sqlite3.connect(data / "state.db")


def test_a_data_dir_names_the_entries_removed_from_the_middle_of_its_log(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: entries missing inside the custody log are named by their seq range."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.execute("DELETE FROM custody_log WHERE seq IN (3, 4)")
    conn.commit()
    conn.close()
    report = verify_paths([data])
    assert "log-order: seq 5 follows seq 2: entries 3..4 were removed from the log" in \
        report.problems
    assert not report.ok


def test_a_data_dir_names_an_edited_entry_and_one_that_is_not_json(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: an entry changed since it was logged is named by seq and kind, under its clip
    when it has one and for the whole log when not; a body that is no JSON is named too."""
    data, conn = _data_copy(sealed_station, tmp_path)
    target = sealed_station.clip_ids[1]
    seq, kind = conn.execute("SELECT seq, kind FROM custody_log WHERE clip_id = ? ORDER BY seq "
                             "LIMIT 1", (target,)).fetchone()
    conn.execute("UPDATE custody_log SET body = '{\"edited\": true}' WHERE seq = ?", (seq,))
    plain, plain_kind = conn.execute("SELECT seq, kind FROM custody_log WHERE clip_id IS NULL "
                                     "ORDER BY seq LIMIT 1").fetchone()
    conn.execute("UPDATE custody_log SET body = 'not json' WHERE seq = ?", (plain,))
    conn.commit()
    conn.close()
    report = verify_paths([data])
    assert (f"log-leaf: seq {seq} ({kind}) no longer hashes to the leaf stored when it was "
            "logged: the entry was edited") in _clip(report, target).problems
    assert any(p.startswith(f"log-format: seq {plain} body is not JSON: ")
               for p in report.problems), report.problems
    assert (f"log-leaf: seq {plain} ({plain_kind}) no longer hashes to the leaf stored when "
            "it was logged: the entry was edited") in report.problems


def test_a_data_dir_names_each_checkpoint_that_no_longer_matches_its_log(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: a checkpoint whose table row differs from what was signed, one covering more
    entries than the log has, and one whose root the log no longer gives are each named
    with their size, the time they were signed and what differs."""
    data, conn = _data_copy(sealed_station, tmp_path)
    (size,), = conn.execute("SELECT MAX(size) FROM checkpoints")
    signed = json.loads(dsse.b64decode(json.loads(conn.execute(
        "SELECT envelope FROM checkpoints WHERE size = ?", (size,)).fetchone()[0])["payload"]))
    conn.execute("UPDATE checkpoints SET root = ? WHERE size = ?", ("00" * 32, size))
    conn.execute("DELETE FROM custody_log WHERE seq = ?", (size,))
    conn.commit()
    conn.close()
    report = verify_paths([data])
    where = f"checkpoint of size {size}"
    assert (f"checkpoint-field: {where}: the signed payload says size {size} root "
            f"{signed['root']}, the table row differs") in report.problems
    assert (f"checkpoint-beyond: {where} signed at {signed['at']} covers {size} entries, the "
            f"log has only {size - 1}: entries were removed from its end") in report.problems


def test_a_data_dir_names_a_checkpoint_whose_root_the_log_no_longer_gives(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: a log changed under a checkpoint is named with the root it gives now and the
    root that was signed."""
    data, conn = _data_copy(sealed_station, tmp_path)
    (size,), = conn.execute("SELECT MIN(size) FROM checkpoints")
    signed = json.loads(dsse.b64decode(json.loads(conn.execute(
        "SELECT envelope FROM checkpoints WHERE size = ?", (size,)).fetchone()[0])["payload"]))
    conn.execute("UPDATE custody_log SET body = '{\"edited\": true}' WHERE seq = 1")
    conn.commit()
    # The leaves the entries give now, as the verifier recomputes them.
    leaves = [merkle.leaf_hash(canonicalize({"seq": seq, "at": at, "kind": kind,
                                             "clip_id": clip_id, "body": json.loads(body)}))
              for seq, at, kind, clip_id, body in conn.execute(
                  "SELECT seq, at, kind, clip_id, body FROM custody_log WHERE seq <= ? "
                  "ORDER BY seq", (size,))]
    conn.close()
    report = verify_paths([data])
    now_root = merkle.root(leaves).hex()
    assert (f"checkpoint-root: the log's first {size} entries hash to {now_root}, the "
            f"checkpoint signed at {signed['at']} says {signed['root']}: the log was changed "
            "after it was signed") in report.problems


def test_a_data_dir_with_an_unreadable_checkpoint_names_it(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: a checkpoint envelope that is no JSON is named; the others are still checked."""
    data, conn = _data_copy(sealed_station, tmp_path)
    (size,), = conn.execute("SELECT MIN(size) FROM checkpoints")
    conn.execute("UPDATE checkpoints SET envelope = '{' WHERE size = ?", (size,))
    conn.commit()
    conn.close()
    report = verify_paths([data])
    assert any(p.startswith(f"checkpoint-field: checkpoint of size {size}: envelope is not "
                            "JSON: ") for p in report.problems), report.problems


def test_a_data_dir_warns_of_log_entries_no_checkpoint_covers(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: entries logged after the last checkpoint, or a log with no checkpoint at all,
    are warned of with their number (not a failure: the next checkpoint signs them)."""
    data, conn = _data_copy(sealed_station, tmp_path)
    (entries,), = conn.execute("SELECT COUNT(*) FROM custody_log")
    (newest,), = conn.execute("SELECT MAX(size) FROM checkpoints")
    conn.execute("DELETE FROM checkpoints WHERE size = ?", (newest,))
    conn.commit()
    (covered,), = conn.execute("SELECT MAX(size) FROM checkpoints")
    conn.close()
    report = verify_paths([data])
    assert (f"{data}: the last {entries - covered} log entries are not yet covered by a "
            "signed checkpoint") in report.warnings
    conn = sqlite3.connect(data / "state.db")
    conn.execute("DELETE FROM checkpoints")
    conn.commit()
    conn.close()
    report = verify_paths([data])
    assert f"{data}: the log has {entries} entries and no checkpoint yet" in report.warnings


def test_a_data_dir_names_files_in_the_vault_that_are_no_objects(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: a file misplaced under vault/sha256 or an object that is a link is named; a
    partial copy left in incoming/ is a warning."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.close()
    objects = data / "vault" / "sha256"
    (objects / "notes.txt").write_text("x")
    real = next(p for p in objects.rglob("*") if p.is_file() and len(p.name) == 64)
    link = real.parent / ("f" * 64 if real.name != "f" * 64 else "e" * 64)
    link = objects / link.name[:2] / link.name[2:4] / link.name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real)
    (data / "vault" / "incoming").mkdir(exist_ok=True)
    (data / "vault" / "incoming" / "clip.part").write_bytes(b"partial")
    report = verify_paths([data])
    rel = link.relative_to(objects).as_posix()
    assert "vault-format: unexpected file vault/sha256/notes.txt" in report.problems
    assert f"vault-format: vault/sha256/{rel} is not a regular file" in report.problems
    assert (f"{data / 'vault'}/incoming holds partial copies (the daemon removes them at start "
            "and copies those clips again)") in report.warnings


def test_a_data_dir_is_anchored_by_trust_and_fails_every_clip_under_another_ca(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: with --trust, a data directory whose station certificate chains to it has
    every clip anchored; under another CA the certificate's failure is named for the
    directory and marks every clip failed; without --trust every clip is unanchored and
    the certificate's fingerprint is given to compare."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.close()
    ca = ca_since_yesterday(tmp_path / "ca")
    cert = issued_a_day_ago(ca, _station_key(sealed_station), "ST-0001")
    (data / "keys" / "station.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    anchored = verify_paths([data], trust=ca.cert_path)
    assert anchored.ok, (anchored.problems, [c.problems for c in anchored.clips])
    assert anchored.targets == [{"path": str(data), "kind": "data_dir"}]
    assert {c.trust for c in anchored.clips} == {"anchored"}
    other = DevCA(tmp_path / "other-ca", name="someone else's CA")
    wrong = verify_paths([data], trust=other.cert_path)
    (why,) = [p for p in wrong.problems if p.startswith("cert-invalid:")]
    assert why.startswith(f"cert-invalid: {data}: ") and "not among the 1 trust anchor(s)" in why
    assert {c.trust for c in wrong.clips} == {"failed"}
    for clip in wrong.clips:
        assert (f"trust: the station certificate does not establish who signed this clip "
                f"({why})") in clip.problems
    plain = verify_paths([data])
    assert {c.trust for c in plain.clips} == {"unanchored"}
    assert any(w.startswith(f"{data}: station certificate ") and "not anchored" in w
               for w in plain.warnings), plain.warnings


def test_a_data_dir_certificate_may_be_a_link_an_installer_made(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: the station's own keys/station.pem is read through a link (installers link
    it), unlike files inside a bundle."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.close()
    pem = data / "keys" / "station.pem"
    real = tmp_path / "installed-station.pem"
    shutil.move(pem, real)
    pem.symlink_to(real)
    report = verify_paths([data])
    assert report.ok, report.problems


def test_verifying_a_data_dir_changes_nothing_in_it(sealed_station: SealedStation,
                                                    tmp_path: Path) -> None:
    """Rule: verification opens the station's database read-only: no byte of the data
    directory changes (a running daemon is not disturbed); only SQLite's own index of its
    write-ahead log may appear beside the database, as for any reader."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.close()

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*"))
                if p.is_file() and p.name not in ("state.db-wal", "state.db-shm")}

    before = snapshot()
    assert verify_paths([data]).ok
    assert snapshot() == before


def test_a_data_dir_whose_database_cannot_be_opened_says_so(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: a state.db that is no database is a named failure of the store."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.close()
    for extra in ("state.db-wal", "state.db-shm"):
        (data / extra).unlink(missing_ok=True)
    (data / "state.db").write_bytes(b"not a database" * 100)
    report = verify_paths([data])
    assert any(p.startswith("store: ") for p in report.problems), report.problems
    assert not report.ok


def test_a_data_dir_names_each_clip_whose_row_bytes_or_manifest_disagree(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: for each clip the data directory's verification names, word for word, a state
    the log's history does not lead to, bytes missing from the vault while it should hold
    them, a sealed clip without a manifest or with one that is no JSON, and a database
    digest that is not the manifest's."""
    data, conn = _data_copy(sealed_station, tmp_path)
    edited, gone, unsealed, garbled, other = sealed_station.clip_ids[:5]
    state = {c: conn.execute("SELECT state FROM clips WHERE clip_id = ?", (c,)).fetchone()[0]
             for c in (edited, gone, unsealed)}
    conn.execute("UPDATE clips SET state = 'acknowledged' WHERE clip_id = ?", (edited,))
    (gone_sha,), = conn.execute("SELECT sha256 FROM clips WHERE clip_id = ?", (gone,))
    conn.execute("UPDATE clips SET manifest = NULL WHERE clip_id = ?", (unsealed,))
    conn.execute("UPDATE clips SET manifest = '{' WHERE clip_id = ?", (garbled,))
    (other_sha,), = conn.execute("SELECT sha256 FROM clips WHERE clip_id = ?", (other,))
    conn.execute("UPDATE clips SET sha256 = ? WHERE clip_id = ?", ("ab" * 32, other))
    conn.commit()
    conn.close()
    Vault(data / "vault").path_for(gone_sha).unlink()
    report = verify_paths([data])
    assert (f"log-state: the database says acknowledged, the log's history leaves the clip "
            f"{state[edited]}") in _clip(report, edited).problems
    assert (f"vault-missing: the clip is {state[gone]} but its bytes ({gone_sha}) are not in "
            "the vault") in _clip(report, gone).problems
    assert (f"manifest-missing: the clip is {state[unsealed]} but has no manifest") in \
        _clip(report, unsealed).problems
    assert any(p.startswith("manifest-missing: the stored manifest is not JSON: ")
               for p in _clip(report, garbled).problems)
    assert (f"manifest-db: the manifest says SHA-256 {other_sha}, the database {'ab' * 32}") in \
        _clip(report, other).problems
    assert {c.clip_id for c in report.clips if not c.ok} == {edited, gone, unsealed, garbled,
                                                              other}


def test_a_data_dir_names_a_damaged_vault_object_no_clip_refers_to(
        sealed_station: SealedStation, tmp_path: Path) -> None:
    """Rule: an object in the vault that no clip names and whose bytes are not its name
    is a finding of the directory."""
    data, conn = _data_copy(sealed_station, tmp_path)
    conn.close()
    name = "cd" * 32
    stray = data / "vault" / "sha256" / name[:2] / name[2:4] / name
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"stray bytes")
    report = verify_paths([data])
    got = hashlib.sha256(b"stray bytes").hexdigest()
    assert f"vault-digest: unreferenced vault object {name} reads back as {got}" in \
        report.problems
