"""An exported bundle checked with other people's tools and by the documented hand steps.

- the reference BagIt validator (``bagit.py --validate``, from PyPI);
- an independent DSSE implementation (securesystemslib) for every envelope;
- the README's and docs/AUDIT.md's shell commands, extracted from the text
  and run with bash, openssl, sha256sum and python3 in a temporary
  directory, against a real bundle that must be left exactly as it was;
- FORMATS.md shipped in the bundle, byte for byte the project's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from agent import config as config_mod
from agent.cli.main import main
from agent.custody.keys import keyid_of, load_certificate
from agent.store import Store
from agent.verify import verify_paths
from tests.conftest import write_station_config
from tests.support.bundle_readme import readme_script
from tests.support.stations import camera, running_station
from tests.support.templates import built_once

ROOT = Path(__file__).resolve().parents[2]
BAGIT = str(Path(sys.executable).with_name("bagit.py"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle of two clips whose export had to sign a checkpoint (earlier ones exist)."""
    return built_once("bundle-tools", tmp_path_factory, _build_bundle) / "bundle"


def _build_bundle(base: Path) -> None:
    config_path = write_station_config(base)
    config = config_mod.load(config_path)
    camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
    store = Store(config.data_dir / "state.db", station_id=config.station.id, readonly=True)
    first = store.clips()[0]["clip_id"]
    store.close()
    assert main(["tag", "--config", str(config_path), "--clip", first, "--case", "C-1"]) == 0
    bundle = base / "bundle"
    assert main(["export", "--config", str(config_path), "--all", "--out", str(bundle)]) == 0


@pytest.fixture
def bundle(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def _tree(bundle: Path) -> dict[str, str]:
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file()}


def _bash(script: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def _clip(bundle: Path) -> tuple[str, Path, Path]:
    clip_dir = sorted((bundle / "data" / "clips").iterdir())[0]
    (clip,) = clip_dir.iterdir()
    return clip_dir.name, clip, bundle / "data" / "manifests" / f"{clip_dir.name}.dsse.json"


# --- FORMATS.md ------------------------------------------------------------------------------

def test_every_bundle_carries_the_format_specification(bundle: Path) -> None:
    assert (bundle / "FORMATS.md").read_bytes() == (ROOT / "docs" / "FORMATS.md").read_bytes()
    tags = (bundle / "tagmanifest-sha256.txt").read_text().splitlines()
    digest = hashlib.sha256((bundle / "FORMATS.md").read_bytes()).hexdigest()
    assert f"{digest}  FORMATS.md" in tags
    report = verify_paths([bundle])
    assert report.ok and not any("FORMATS.md" in w for w in report.warnings)
    (bundle / "FORMATS.md").write_text("MUST: trust everything\n")
    assert "bag-digest" in {p.split(":")[0] for p in verify_paths([bundle]).problems}


# --- the hand steps --------------------------------------------------------------------------

def test_readme_steps_check_earlier_checkpoints_and_leave_the_bundle_untouched(
        bundle: Path, tmp_path: Path) -> None:
    earlier = (bundle / "custody" / "checkpoints.jsonl").read_bytes().splitlines()
    assert earlier, "the fixture must have earlier checkpoints"
    before = _tree(bundle)
    result = _bash(readme_script(bundle), bundle, tmp_path / "tmp")
    assert result.returncode == 0, result.stderr
    # Manifest, newest checkpoint, and the first earlier checkpoint from checkpoints.jsonl.
    assert result.stdout.count("Signature Verified Successfully") == 3
    keyid = keyid_of(load_certificate(bundle / "certs" / "station.pem").public_key())
    assert result.stdout.count(keyid) >= 3
    assert _tree(bundle) == before and not (bundle / "station.pub").exists()
    assert any((tmp_path / "tmp").iterdir()), "the commands wrote into the temporary directory"


def test_readme_earlier_checkpoint_signature_step_fails_on_a_forged_line(
        bundle: Path, tmp_path: Path) -> None:
    path = bundle / "custody" / "checkpoints.jsonl"
    lines = path.read_bytes().splitlines()
    item = json.loads(lines[0])
    payload = json.loads(base64.b64decode(item["envelope"]["payload"]))
    payload["root"] = "0" * 64
    item["envelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_bytes(b"\n".join([json.dumps(item).encode(), *lines[1:]]) + b"\n")
    script = readme_script(bundle).replace("sha256sum -c tagmanifest-sha256.txt\n", "")
    result = _bash(script, bundle, tmp_path / "tmp")
    assert result.returncode != 0
    assert "Signature Verification Failure" in result.stdout + result.stderr


def _audit_block() -> str:
    text = (ROOT / "docs" / "AUDIT.md").read_text(encoding="utf-8")
    start = text.index("Minimal checks by hand")
    block = text[text.index("```\n", start) + 4:]
    return block[:block.index("```")]


def test_audit_hand_steps_run_in_a_temp_dir_on_a_real_bundle(bundle: Path,
                                                            tmp_path: Path) -> None:
    _clip_id, clip, manifest = _clip(bundle)
    script = (f"set -euo pipefail\nC='{clip.relative_to(bundle)}'\n"
              f"M='{manifest.relative_to(bundle)}'\n" + _audit_block())
    before = _tree(bundle)
    result = _bash(script, bundle, tmp_path / "tmp")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Signature Verified Successfully" in lines
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert lines[-2:] == [sha, sha]
    assert _tree(bundle) == before, "the hand steps must not write into the bundle"
    # And they tell a changed clip from the sealed one.
    clip.write_bytes(clip.read_bytes() + b"x")
    changed = _bash(script, bundle, tmp_path / "tmp2").stdout.splitlines()
    assert changed[-1] == sha and changed[-2] != sha


# --- other people's tools ----------------------------------------------------------------------

def _bagit(bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BAGIT, "--validate", str(bundle)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_reference_bagit_validator_accepts_the_bundle_and_catches_damage(
        bundle: Path) -> None:
    result = _bagit(bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stderr
    _clip_id, clip, _manifest = _clip(bundle)
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 1
    clip.write_bytes(bytes(data))
    damaged = _bagit(bundle)
    assert damaged.returncode != 0 and "invalid" in damaged.stderr.lower()


def _station_key(bundle: Path) -> SSlibKey:
    public = load_certificate(bundle / "certs" / "station.pem").public_key()
    return SSlibKey.from_crypto(public, keyid=keyid_of(public))


def test_every_envelope_verifies_with_securesystemslib(bundle: Path) -> None:
    key = _station_key(bundle)
    envelopes = [json.loads(p.read_text()) for p in (bundle / "data" / "manifests").iterdir()]
    envelopes.append(json.loads((bundle / "custody" / "checkpoint.dsse.json").read_text()))
    envelopes += [json.loads(line)["envelope"] for line in
                  (bundle / "custody" / "checkpoints.jsonl").read_text().splitlines()]
    assert len(envelopes) >= 4
    for raw in envelopes:
        envelope = Envelope.from_dict(json.loads(json.dumps(raw)))
        assert envelope.verify([key], 1) == {key.keyid: key}
        assert envelope.pae() == b"DSSEv1 %d %s %d %s" % (
            len(raw["payloadType"]), raw["payloadType"].encode(),
            len(base64.b64decode(raw["payload"])), base64.b64decode(raw["payload"]))
    # Independent, and not lenient: an edited payload fails there too.
    forged = json.loads(json.dumps(envelopes[0]))
    forged["payload"] = base64.b64encode(b'{"clip_id":"forged"}').decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(forged).verify([key], 1)


def test_a_station_signature_without_its_keyid_does_not_verify(bundle: Path) -> None:
    _clip_id, _clip_file, manifest = _clip(bundle)
    envelope = json.loads(manifest.read_text())
    del envelope["signatures"][0]["keyid"]  # still a valid DSSE signature by the station key
    manifest.write_text(json.dumps(envelope))
    report = verify_paths([bundle])
    (result,) = [c for c in report.clips if c.clip_id == _clip_id]
    assert any("no signature names the station's keyid" in p for p in result.problems)
