"""Property-based fuzzing of everything ``bwc-agent verify`` reads from a bundle.

Properties, for arbitrary input (random bytes, structured JSON-like values,
and mutations of the real files of a real exported bundle):

- the reader returns (never hangs: every example has a deadline);
- nothing escapes but the module's own error type (boundedjson's
  JSONInputError), and the bundle verifier raises nothing at all: every
  damage is a finding named by one of the documented codes;
- a bundle with any file changed does not verify.

Kept fast and deterministic for CI: a bounded number of examples per property,
derandomized (the same examples every run, as in the gat947 decoder's fuzzing),
no shrinking beyond hypothesis' defaults, one small real bundle shared by the module.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import boundedjson
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.verify import verify_paths
from agent.verify.bagit import bagit_txt_problems, decode_path, parse_bag_info, parse_manifest
from agent.verify.checks import (
    checkpoint_fields,
    history_problems,
    identity_from_pem,
    manifest_problems,
    open_checkpoint,
    open_envelope,
    parse_canonical,
)
from agent.verify.report import Report
from tests.support.stations import exported_station
from tests.support.templates import built_once
from tests.unit.test_officer_export import exported  # noqa: F401 (a fixture: officers, cases)

FAST = settings(derandomize=True, max_examples=40, deadline=2000,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
# Every code a finding may start with (docs/AUDIT.md section 5).
CODES = {"bag-missing", "bag-digest", "bag-unlisted", "bag-oxum", "bag-format", "cert-missing",
         "cert-invalid", "trust", "signature", "manifest-missing", "manifest-field",
         "manifest-canonical", "manifest-clip", "manifest-station", "file-missing",
         "file-size", "file-digest", "log-missing", "log-format", "log-order", "log-leaf",
         "log-inclusion", "log-history", "log-link", "checkpoint-missing", "checkpoint-field",
         "checkpoint-consistency",
         # officers and cases (agent/officers/audit.py)
         "officer-key", "officer-roster", "officer-credential", "case-window", "case-index",
         "log-tag",
         # key rotations (agent/verify/rotation.py; docs/FORMATS.md section 5.1)
         "rotation-format", "rotation-position", "rotation-signature", "rotation-chain",
         "rotation-cert"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = built_once("verify-fuzz", tmp_path_factory, exported_station) / "bundle"
    assert verify_paths([bundle]).ok
    return bundle


@pytest.fixture(scope="module")
def work(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("work") / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def _files(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()
                  and "/clips/" not in p.as_posix())


def _verify_with(work: Path, rel: str, data: bytes) -> Report:
    path = work / rel
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        return verify_paths([work])
    finally:
        path.write_bytes(original)


def _assert_named(report: Report) -> None:
    findings = report.problems + [p for c in report.clips for p in c.problems]
    for finding in findings:
        assert finding.split(":", 1)[0] in CODES, finding


# --- whole bundles: any file replaced by anything ------------------------------------------

@FAST
@given(data=st.data())
def test_any_bytes_in_any_bundle_file_are_named_findings(work: Path, data: Any) -> None:
    rel = data.draw(st.sampled_from(_files(work)), label="file")
    content = data.draw(st.binary(max_size=2048), label="content")
    assume(content != (work / rel).read_bytes())
    report = _verify_with(work, rel, content)
    _assert_named(report)
    if rel not in ("README.txt", "FORMATS.md"):
        assert not report.ok  # (those two are covered by the tag manifest only)
    else:
        assert any(p.startswith("bag-digest:") for p in report.problems)


@FAST
@given(data=st.data())
def test_mutated_bytes_of_real_files_are_named_findings(work: Path, data: Any) -> None:
    rel = data.draw(st.sampled_from(_files(work)), label="file")
    original = bytearray((work / rel).read_bytes())
    assume(original)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(0, len(original) - 1))
        original[at] = data.draw(st.integers(0, 255))
    assume(bytes(original) != (work / rel).read_bytes())
    report = _verify_with(work, rel, bytes(original))
    _assert_named(report)
    assert not report.ok


@FAST
@given(lines=st.lists(json_values, max_size=6))
def test_any_json_lines_as_log_entries_are_named_findings(work: Path, lines: list[Any]) -> None:
    data = b"".join(json.dumps(v).encode() + b"\n" for v in lines)
    report = _verify_with(work, "custody/entries.jsonl", data)
    _assert_named(report)
    assert not report.ok


@FAST
@given(value=json_values)
def test_any_json_as_proofs_or_checkpoint_is_a_named_finding(work: Path, value: Any) -> None:
    for rel in ("custody/proofs.json", "custody/checkpoint.dsse.json",
                "custody/checkpoints.jsonl"):
        report = _verify_with(work, rel, json.dumps(value).encode())
        _assert_named(report)
        assert not report.ok


@pytest.fixture(scope="module")
def officer_work(exported: dict[str, Any],  # noqa: F811 (the imported fixture)
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("officers") / "bundle"
    shutil.copytree(exported["bundle"], copy)
    return copy


@FAST
@given(data=st.data())
def test_any_content_in_officer_and_case_files_is_a_named_finding(officer_work: Path,
                                                                  data: Any) -> None:
    files = [rel for rel in _files(officer_work) if rel.startswith(("officers/", "cases/"))]
    assert len(files) >= 3
    rel = data.draw(st.sampled_from(files), label="file")
    content = data.draw(
        st.binary(max_size=1024) | json_values.map(lambda v: json.dumps(v).encode())
        | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
        | st.lists(json_values, max_size=4).map(
            lambda vs: b"".join(json.dumps(v).encode() + b"\n" for v in vs)), label="content")
    assume(content != (officer_work / rel).read_bytes())
    report = _verify_with(officer_work, rel, content)
    _assert_named(report)
    assert not report.ok


# --- envelopes, checkpoints, manifests --------------------------------------------------------

envelopes = st.fixed_dictionaries({}, optional={
    "payloadType": st.sampled_from([dsse.MANIFEST, dsse.CHECKPOINT, "x"]) | json_values,
    "payload": st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())
    | json_values.map(lambda v: base64.b64encode(json.dumps(v).encode()).decode())
    | json_values,
    "signatures": st.lists(st.fixed_dictionaries({}, optional={
        "keyid": st.text(max_size=70) | json_values,
        "sig": st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
        | json_values}) | json_values, max_size=3) | json_values,
})


@FAST
@given(envelope=envelopes | json_values)
def test_any_envelope_gives_findings_not_exceptions(envelope: Any, work: Path) -> None:
    report = Report()
    identity = identity_from_pem((work / "certs" / "station.pem").read_bytes(),
                                 "station.pem", report, "test")
    assert identity is not None
    for who in (identity, None):
        warnings: list[str] = []
        _payload, problems = open_envelope(envelope, who, dsse.MANIFEST, "manifest", warnings)
        assert all(p.startswith("signature: ") for p in problems)
        fields, problems = open_checkpoint(envelope, who, "checkpoint", warnings)
        assert fields is None or isinstance(fields, dict)
        report = _verify_with(work, f"data/manifests/{_clip(work)}.dsse.json",
                              json.dumps(envelope).encode())
        _assert_named(report)


def _clip(work: Path) -> str:
    (clip,) = (work / "data" / "clips").iterdir()
    return clip.name


@FAST
@given(payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_signed_payload_gives_findings(payload: bytes) -> None:
    value, problems = parse_canonical(payload, "manifest-canonical", "manifest")
    assert all(p.startswith("manifest-canonical: ") for p in problems)
    more, _warnings = manifest_problems(value, clip_id=None, identity=None, digest=None)
    assert all(p.split(":", 1)[0] in CODES for p in more)
    fields, problems = checkpoint_fields(payload, "checkpoint")
    assert fields is None or {"size", "root"} <= set(fields)
    assert all(p.startswith("checkpoint-field: ") for p in problems)


@FAST
@given(entries=st.lists(st.dictionaries(st.sampled_from(["seq", "kind", "body", "clip_id"]),
                                        json_values), max_size=6))
def test_any_history_gives_findings(entries: list[dict[str, Any]]) -> None:
    problems, _state = history_problems(entries)
    assert all(p.startswith("log-history: ") for p in problems)


# --- BagIt tag files, certificates, JSON ----------------------------------------------------

@FAST
@given(text=st.text(max_size=500))
def test_any_bagit_text_gives_findings(text: str) -> None:
    entries, problems = parse_manifest(text, "manifest-sha256.txt")
    assert all(p.startswith("bag-format: ") for p in problems)
    assert all(decode_path(path) or True for path in entries)
    parse_bag_info(text)
    assert all(p.split(":", 1)[0] in CODES for p in bagit_txt_problems(text))


@FAST
@given(data=st.data())
def test_any_certificate_bytes_give_a_finding_or_an_identity(work: Path, data: Any) -> None:
    pem = (work / "certs" / "station.pem").read_bytes()
    lines = pem.splitlines()
    der = bytearray(base64.b64decode(b"".join(lines[1:-1])))
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    body = base64.encodebytes(bytes(der))
    mutated = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
    for candidate in (mutated, data.draw(st.binary(max_size=300))):
        report = Report()
        identity_from_pem(candidate, "station.pem", report, "test")
        _assert_named(report)
        report = _verify_with(work, "certs/station.pem", candidate)
        _assert_named(report)


@settings(derandomize=True, max_examples=200, deadline=1000)
@given(data=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n))
def test_bounded_json_raises_only_its_own_error(data: bytes) -> None:
    try:
        value = boundedjson.loads(data, max_bytes=10_000, max_depth=32)
    except boundedjson.JSONInputError:
        return
    # What it accepts is JSON that the standard parser reads the same way.
    assert value == json.loads(data)


def test_canonical_form_of_accepted_json_never_raises_unexpectedly() -> None:
    deep = b"[" * 32 + b"]" * 32
    assert canonicalize(boundedjson.loads(deep, max_bytes=100, max_depth=32)) == deep
