"""Hostile bundles given to ``bwc-agent verify``: links, FIFOs, huge and deep files, forged
verdict lines, an untrusted anchor, extra signatures and files.

Each bundle is a real export of a real sealed station, then damaged the way
an adversary would.  The verifier runs as users run it: the installed
``bwc-agent`` command in a child process, with a time limit and an address
space limit, so a hang or a memory blow-up fails the test instead of the
machine.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.custody import dsse
from agent.custody.keys import StationKey
from agent.devpki import DevCA
from agent.verify import verify_paths
from agent.verify.report import escape
from tests.conftest import write_station_config
from tests.support.stations import camera, running_station
from tests.support.templates import built_once

BWC_AGENT = str(Path(sys.executable).with_name("bwc-agent"))
LIMIT_S = 20


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = built_once("verify-hostile", tmp_path_factory, _build_station)
    return {"base": base, "bundle": base / "bundle",
            "data": config_mod.load(base / "station.toml").data_dir}


def _build_station(base: Path) -> None:
    config_path = write_station_config(base)
    config = config_mod.load(config_path)
    camera(config, clips=2)
    with running_station(config) as running:
        assert running.run_once().ok
    bundle = base / "bundle"
    assert main(["export", "--config", str(config_path), "--all", "--out", str(bundle)]) == 0


@pytest.fixture
def bundle(station: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(station["bundle"], copy, symlinks=True)
    return copy


def _limit_memory() -> None:
    two_gib = 2 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (two_gib, two_gib))


def verify_cli(*args: str) -> tuple[int, str, float]:
    """``bwc-agent verify ARGS --json`` in a child process: (exit code, report, seconds)."""
    started = time.monotonic()
    try:
        proc = subprocess.run([BWC_AGENT, "verify", *args], capture_output=True, text=True,
                              timeout=LIMIT_S, preexec_fn=_limit_memory, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bwc-agent verify did not finish within {LIMIT_S} s")
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def _report(bundle: Path) -> dict[str, Any]:
    code, out, _ = verify_cli(str(bundle), "--json")
    assert code == 1, out
    return json.loads(out)


def _all_problems(report: dict[str, Any]) -> list[str]:
    return report["problems"] + [p for c in report["clips"] for p in c["problems"]]


def _clip_ids(bundle: Path) -> list[str]:
    return sorted(p.name for p in (bundle / "data" / "clips").iterdir())


# --- links, special files, sizes -----------------------------------------------------------

def test_entries_linked_to_dev_zero_is_a_named_failure_not_24_gb(bundle: Path) -> None:
    entries = bundle / "custody" / "entries.jsonl"
    entries.unlink()
    entries.symlink_to("/dev/zero")
    report = _report(bundle)
    problems = _all_problems(report)
    assert "bag-format: custody/entries.jsonl is a symbolic link; a bundle holds regular " \
           "files only (not followed)" in problems
    assert any(p.startswith("log-missing: custody/entries.jsonl") and "symbolic link" in p
               for p in problems), problems


@pytest.mark.parametrize("rel", ["custody/checkpoint.dsse.json", "certs/station.pem",
                                 "custody/checkpoints.jsonl", "bagit.txt"])
def test_a_fifo_in_place_of_a_file_is_named_and_does_not_hang(bundle: Path, rel: str) -> None:
    (bundle / rel).unlink()
    os.mkfifo(bundle / rel)
    code, out, seconds = verify_cli(str(bundle), "--json")
    assert code == 1 and seconds < LIMIT_S
    problems = _all_problems(json.loads(out))
    assert f"bag-format: {rel} is not a regular file" in problems
    assert any(rel in p and "a FIFO, not a regular file (not read)" in p for p in problems), \
        problems


def test_a_linked_certificate_is_not_parsed(bundle: Path, station: dict[str, Path]) -> None:
    cert = bundle / "certs" / "station.pem"
    cert.unlink()
    cert.symlink_to(station["data"] / "keys" / "station.pem")  # the right certificate, even
    report = _report(bundle)
    problems = _all_problems(report)
    assert any(p.startswith("cert-missing:") and "symbolic link (not followed)" in p
               for p in problems), problems
    # Not parsed, so nothing is verified with it: every clip fails its signature check.
    assert all(not c["ok"] for c in report["clips"])
    assert all(any(p.startswith("signature: manifest: not checked") for p in c["problems"])
               for c in report["clips"])


def test_a_linked_directory_is_not_followed(bundle: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(bundle / "custody", elsewhere)
    (bundle / "custody").symlink_to(elsewhere, target_is_directory=True)
    problems = _all_problems(_report(bundle))
    assert "bag-format: custody is a symbolic link; a bundle holds regular files only " \
           "(not followed)" in problems
    assert any(p.startswith("checkpoint-missing: custody/checkpoint.dsse.json") for p in
               problems)


def test_a_huge_log_file_is_refused_by_size_without_reading_it(bundle: Path) -> None:
    entries = bundle / "custody" / "entries.jsonl"
    with open(entries, "r+b") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB that cost nothing on disk
    code, out, seconds = verify_cli(str(bundle), "--json")
    assert code == 1 and seconds < 10
    assert any("custody/entries.jsonl is larger than this verifier reads (512 MiB)" in p
               for p in _all_problems(json.loads(out)))


# --- deep and huge JSON ---------------------------------------------------------------------

def _rewrite(bundle: Path, rel: str, data: bytes) -> None:
    (bundle / rel).write_bytes(data)


@pytest.mark.parametrize(("rel", "data", "code"), [
    ("custody/proofs.json", b"[" * 200_000 + b"]" * 200_000, "log-missing"),
    ("custody/checkpoint.dsse.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
     "checkpoint-missing"),
    ("custody/proofs.json", b'{"checkpoint":{"size":' + b"7" * 100_000 + b"}}", "log-missing"),
    ("custody/checkpoints.jsonl", b"[" * 100_000 + b"\n", "checkpoint-field"),
    ("custody/entries.jsonl", b'{"seq":' + b"9" * 100_000 + b"}\n", "log-format"),
], ids=["deep proofs", "deep checkpoint", "huge number", "deep checkpoints line",
        "huge seq"])
def test_deep_or_huge_json_is_a_named_failure(bundle: Path, rel: str, data: bytes,
                                              code: str) -> None:
    _rewrite(bundle, rel, data)
    problems = _all_problems(_report(bundle))
    assert any(p.startswith(f"{code}: ") and ("nested deeper" in p or "a number of" in p)
               for p in problems), problems


def test_a_deep_manifest_payload_is_a_named_failure(bundle: Path) -> None:
    clip_id = _clip_ids(bundle)[0]
    path = bundle / "data" / "manifests" / f"{clip_id}.dsse.json"
    envelope = json.loads(path.read_text())
    envelope["payload"] = base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    path.write_text(json.dumps(envelope))
    report = _report(bundle)
    (clip,) = [c for c in report["clips"] if c["clip_id"] == clip_id]
    assert any(p.startswith("manifest-canonical: manifest payload is not acceptable JSON: "
                            "nested deeper") for p in clip["problems"]), clip["problems"]


# --- trust in each clip's verdict ------------------------------------------------------------

def test_a_trust_anchor_that_does_not_verify_fails_every_clip(bundle: Path,
                                                              tmp_path: Path) -> None:
    other_ca = DevCA(tmp_path / "other-ca")
    code, out, _ = verify_cli(str(bundle), "--trust", str(other_ca.cert_path), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["clips"] and all(not c["ok"] for c in report["clips"])
    assert all(c["trust"] == "failed" for c in report["clips"])
    assert all(any(p.startswith("trust: ") for p in c["problems"]) for c in report["clips"])
    code, text, _ = verify_cli(str(bundle), "--trust", str(other_ca.cert_path))
    assert ": OK" not in text and text.count(": FAILED: trust: ") == 2


def test_an_unanchored_clip_says_so_in_its_verdict(bundle: Path) -> None:
    code, text, _ = verify_cli(str(bundle))
    assert code == 0
    assert text.count(": OK (certificate not anchored: no --trust)") == 2
    code, out, _ = verify_cli(str(bundle), "--json")
    assert {c["trust"] for c in json.loads(out)["clips"]} == {"unanchored"}


def test_an_extra_signature_by_an_unknown_key_is_a_warning(bundle: Path) -> None:
    clip_id = _clip_ids(bundle)[0]
    path = bundle / "data" / "manifests" / f"{clip_id}.dsse.json"
    envelope = json.loads(path.read_text())
    stranger = StationKey.generate()
    extra = dsse.sign_envelope(envelope["payloadType"], base64.b64decode(envelope["payload"]),
                               [stranger])["signatures"][0]
    envelope["signatures"].append(extra)
    path.write_text(json.dumps(envelope))
    report = verify_paths([bundle])
    assert any(f"{clip_id}: manifest: signature 1 (keyid {stranger.keyid})" in w
               and "not the station's" in w for w in report.warnings), report.warnings


def test_an_extra_file_in_the_tag_manifest_is_a_warning(bundle: Path) -> None:
    import hashlib

    (bundle / "custody" / "notes.txt").write_text("trust me\n")
    digest = hashlib.sha256(b"trust me\n").hexdigest()
    with open(bundle / "tagmanifest-sha256.txt", "a") as f:
        f.write(f"{digest}  custody/notes.txt\n")
    report = verify_paths([bundle])
    assert any("custody/notes.txt is not part of a bwc.bundle/v1 bundle" in w
               for w in report.warnings), report.warnings


# --- escaping --------------------------------------------------------------------------------

def test_escape_makes_every_hostile_character_visible() -> None:
    assert escape("plain 文件 name.MP4") == "plain 文件 name.MP4"
    assert escape("a\nb") == "a\\nb"
    assert escape("\x1b[2K\rVERIFIED") == "\\x1b[2K\\rVERIFIED"
    assert escape("\u202egpj.exe") == "\\u202egpj.exe"  # right-to-left override
    assert escape("\x00\x7f\x9b\u2028") == "\\x00\\x7f\\x9b\\u2028"
    assert escape("back\\slash") == "back\\\\slash"


def test_a_file_name_cannot_forge_a_verdict_line(bundle: Path) -> None:
    clip_id = _clip_ids(bundle)[0]
    (clip,) = (bundle / "data" / "clips" / clip_id).iterdir()
    forged = "x\n  00000000-0000-0000-0000-000000000000  evil.mp4: OK\nVERIFIED: 9 clip(s) OK\x1b[2K"
    clip.rename(clip.with_name(forged.replace("/", "_")))
    code, text, _ = verify_cli(str(bundle))
    assert code == 1
    lines = text.splitlines()
    assert not any(line.startswith("VERIFIED") for line in lines)
    assert not any(line.strip().startswith("00000000-0000") for line in lines)
    assert "\x1b" not in text
    assert "x\\n  00000000-0000-0000-0000-000000000000  evil.mp4: OK\\nVERIFIED" in text
