"""The verifier's rules for manifests, checkpoints, a clip's history and trust, word for word.

A real station is built once for the module (tests/support/templates.py): its camera is
unplugged in the middle of the first copy, docked again, both clips are sealed and
exported.  Most tests change their own copy of that bundle the way a forger holding the
station's key could (a manifest or checkpoint signed again, a log entry removed) and run
the verifier on it (``bwc-agent verify BUNDLE``, or ``verify CLIP MANIFEST --cert``), then
check the exact findings an auditor and their scripts read: code, field path, value,
what was expected, which seq.  Where a rule is cleanest on its own (a history of log
entries, a checkpoint payload), the check is called with crafted input.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.custody.jcs import canonicalize
from agent.station import Station
from agent.verify import Report, verify_paths
from agent.verify.checks import checkpoint_fields, history_problems, parse_json
from agent.verify.report import ClipResult
from tests.support.bundles import (
    clip_ids,
    copy_bundle,
    resign_manifest,
    sign_checkpoint,
    sign_manifest,
    signed_payload,
)
from tests.support.stations import FaultyDevice, exported_station, gone_after, sim_devices
from tests.support.templates import built_once

CHECKPOINT = "custody/checkpoint.dsse.json"


def _unplugged_mid_copy(station: Station) -> None:
    """The camera is pulled out during the first copy; the clip goes back to discovered."""
    offloader = station.offloader
    assert offloader is not None
    report = offloader.offload(FaultyDevice(sim_devices(station)[0], on_read=gone_after(1)))
    assert report.errors == ["device removed: camera unplugged (USB disconnect)"]


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("verify-checks-rules", tmp_path_factory,
                      lambda base: exported_station(base, clips=2, before=_unplugged_mid_copy))


@pytest.fixture
def bundle(station: Path, tmp_path: Path) -> Path:
    return copy_bundle(station, tmp_path)


def _entries(bundle: Path) -> list[dict[str, Any]]:
    lines = (bundle / "custody" / "entries.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def _without_entry(bundle: Path, seq: int) -> None:
    path = bundle / "custody" / "entries.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line + b"\n" for line in lines if json.loads(line)["seq"] != seq))


def _clip(report: Report, clip_id: str) -> ClipResult:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return result


def _copies(bundle: Path) -> dict[str, int]:
    """How many times each clip's copy was started."""
    counts = dict.fromkeys(clip_ids(bundle), 0)
    for entry in _entries(bundle):
        if entry["kind"] == "clip.copying":
            counts[entry["clip_id"]] += 1
    return counts


def _interrupted(bundle: Path) -> str:
    (clip_id,) = [c for c, n in _copies(bundle).items() if n == 2]
    return clip_id


def _copied_once(bundle: Path) -> str:
    (clip_id,) = [c for c, n in _copies(bundle).items() if n == 1]
    return clip_id


def _pair(bundle: Path, clip_id: str) -> list[Path]:
    """The clip file and its manifest, as `verify CLIP MANIFEST` takes them."""
    (clip,) = (bundle / "data" / "clips" / clip_id).iterdir()
    return [clip, bundle / "data" / "manifests" / f"{clip_id}.dsse.json"]


def _findings(bundle: Path, clip_id: str, *codes: str) -> list[str]:
    """The clip's findings with these codes, from verifying the whole bundle."""
    clip = _clip(verify_paths([bundle]), clip_id)
    return [p for p in clip.problems if p.split(":", 1)[0] in codes]


# --- a clip's history in the log ---------------------------------------------------------

def test_a_copy_interrupted_by_unplugging_and_resumed_leaves_an_unbroken_history(
        bundle: Path) -> None:
    """Rule: a clip.discovered entry with a `from` (a copy cut short, the clip back to
    discovered) is a state change, not a second discovery: the resumed clip verifies."""
    clip_id = _interrupted(bundle)
    back = [e for e in _entries(bundle)
            if e["clip_id"] == clip_id and e["kind"] == "clip.discovered" and "from" in e["body"]]
    assert [(e["body"]["from"], e["body"]["to"]) for e in back] == [("copying", "discovered")]
    report = verify_paths([bundle])
    assert report.ok, [*report.problems, *(p for c in report.clips for p in c.problems)]
    assert [(c.state, c.trust) for c in report.clips] == [("sealed", "unanchored")] * 2


def _history_without(bundle: Path, kind: str) -> tuple[list[str], dict[str, int]]:
    """The log-history findings of the clip copied at once, its ``kind`` entry removed from
    the bundle; and the seq of each of its entries by kind."""
    clip_id = _copied_once(bundle)
    seqs = {e["kind"]: e["seq"] for e in _entries(bundle) if e["clip_id"] == clip_id}
    _without_entry(bundle, seqs[kind])
    return _findings(bundle, clip_id, "log-history"), seqs


def test_a_removed_state_change_is_named_by_the_seq_that_no_longer_chains(
        bundle: Path) -> None:
    """Rule: with the clip.copying entry gone, the clip.copied after it is named by its seq,
    the state it claims to leave and the state the entries before it leave."""
    findings, seqs = _history_without(bundle, "clip.copying")
    assert findings == [
        f"log-history: seq {seqs['clip.copied']} moves the clip from 'copying', but the "
        "entries before it leave it 'discovered' (an entry is missing or out of order)"]


def test_a_history_without_its_discovery_is_named_by_the_first_state_change(
        bundle: Path) -> None:
    """Rule: with the clip.discovered entry gone, the first state change is named by its seq
    as coming before any discovery."""
    findings, seqs = _history_without(bundle, "clip.discovered")
    assert findings == [
        f"log-history: seq {seqs['clip.copying']} moves the clip from 'discovered' but no "
        "clip.discovered entry comes before it"]


def _change(seq: int, kind: str, **body: Any) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "body": body}


def test_facts_between_state_changes_leave_the_state_and_the_chain_goes_on() -> None:
    """Rule: entries that record a fact (clip.tagged, upload.*) leave the state as it is;
    the state changes after them are still replayed and checked (FORMATS.md section 6)."""
    chain = [_change(1, "clip.discovered", path="A.MP4"),
             _change(2, "clip.copying", **{"from": "discovered", "to": "copying"}),
             _change(3, "clip.copied", **{"from": "copying", "to": "copied"}),
             _change(4, "clip.tagged", case_id="CASE-7"),
             _change(5, "clip.sealed", **{"from": "copied", "to": "sealed"}),
             _change(6, "upload.started", offset=0),
             _change(7, "clip.uploading", **{"from": "sealed", "to": "uploading"})]
    assert history_problems(chain) == ([], "uploading")
    skipped = [*chain[:5], chain[5], _change(8, "clip.uploaded",
                                             **{"from": "uploading", "to": "uploaded"})]
    assert history_problems(skipped) == (
        ["log-history: seq 8 moves the clip from 'uploading', but the entries before it "
         "leave it 'sealed' (an entry is missing or out of order)"], "uploaded")


def test_a_second_first_discovery_is_named_with_the_state_the_clip_was_in() -> None:
    """Rule: a clip.discovered without `from` after the clip was already found is named:
    a clip is discovered once."""
    entries = [_change(1, "clip.discovered", path="A.MP4"),
               _change(2, "clip.copying", **{"from": "discovered", "to": "copying"}),
               _change(3, "clip.discovered", path="A.MP4")]
    assert history_problems(entries) == (
        ["log-history: seq 3 discovers the clip again (it was already copying)"], "discovered")


# --- trust, per target --------------------------------------------------------------------

def test_each_target_verified_together_gets_its_own_trust_verdict(bundle: Path,
                                                                  tmp_path: Path) -> None:
    """Rule: verifying several bundles at once, each clip takes the trust verdict of its own
    bundle's certificate: the second bundle's missing certificate fails its every clip,
    and only those."""
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    (other / "certs" / "station.pem").unlink()
    report = verify_paths([bundle, other])
    mine = [c for c in report.clips if c.source == str(bundle)]
    theirs = [c for c in report.clips if c.source == str(other)]
    assert len(mine) == len(theirs) == 2
    assert [(c.trust, c.ok) for c in mine] == [("unanchored", True)] * 2
    assert [c.trust for c in theirs] == ["failed"] * 2
    missing = (f"cert-missing: {other}: no usable station certificate: certs/station.pem "
               "is missing")
    assert missing in report.problems
    for clip in theirs:
        assert ("trust: the station certificate does not establish who signed this clip "
                f"({missing})") in clip.problems


# --- manifest fields ----------------------------------------------------------------------

def _unset(*path: str) -> Any:
    def change(manifest: dict[str, Any]) -> None:
        for dotted in path:
            *parents, name = dotted.split(".")
            node = manifest
            for part in parents:
                node = node[part]
            del node[name]
    return change


def _set(dotted: str, value: Any) -> Any:
    def change(manifest: dict[str, Any]) -> None:
        *parents, name = dotted.split(".")
        node = manifest
        for part in parents:
            node = node[part]
        node[name] = value
    return change


@pytest.mark.parametrize(("change", "expected"), [
    (_set("file", "DCIM/A.MP4"), ["manifest-field: file is not an object"]),
    (_set("file.digests", "none"), ["manifest-field: file.digests is not an object"]),
    (_unset("schema", "file.size"), ["manifest-field: schema is missing",
                                     "manifest-field: file.size is missing",
                                     "manifest-field: schema is None, expected "
                                     "'bwc.manifest/v1'"]),
    (_set("officer.id", 5), ["manifest-field: officer.id is 5, expected string or null"]),
    (_set("file.size", "3946"), ['manifest-field: file.size is "3946", expected integer']),
    (_set("file.size", True), ["manifest-field: file.size is true, expected integer"]),
    (_set("file.digests.sha256", 5),
     ["manifest-field: file.digests.sha256 is 5, expected string"]),
    (_set("device.serial", ["S" * 60]),
     [f'manifest-field: device.serial is ["{"S" * 38}, expected string']),
    (_set("file.mtime", "yesterday"),
     ["manifest-field: file.mtime is 'yesterday', not an RFC 3339 time"]),
    (_set("ingest.copied_at", "2025-03-01T08:00:01.250"),
     ["manifest-field: ingest.copied_at is '2025-03-01T08:00:01.250', not an RFC 3339 time"]),
], ids=["file not an object", "digests not an object", "missing", "optional string a number",
        "size a string", "size true", "digest a number", "long value", "time not a time",
        "time without zone"])
def test_a_malformed_manifest_field_is_named_by_its_path_value_and_expected_type(
        bundle: Path, station: Path, change: Any, expected: list[str]) -> None:
    """Rule: a field the station signed in another form is named by its full path, with its
    value (JSON, at most 40 characters) and the type expected (`or null` where null is
    allowed); a size that is no integer (true is none) is not compared with the file."""
    clip_id = clip_ids(bundle)[0]
    resign_manifest(bundle, station, clip_id, change)
    assert _findings(bundle, clip_id, "manifest-field", "manifest-clip", "manifest-station",
                     "file-size", "file-digest") == expected


@pytest.mark.parametrize(("length", "shown"), [
    (98, "'" + "7" * 98 + "'"),
    (99, "'" + "7" * 99 + "… (101 characters)"),
    (500_000, "'" + "7" * 99 + "… (500002 characters)"),
], ids=["100 characters whole", "101 characters cut", "half a MB cut"])
def test_a_value_a_finding_quotes_is_cut_after_100_characters(
        bundle: Path, station: Path, length: int, shown: str) -> None:
    """Rule: a value from the bundle that a finding quotes is shown as its repr up to 100
    characters, then cut with its whole length named: a forged field of half a MB (as large
    as a manifest within its envelope's 1 MiB bound gets) makes a finding of one line."""
    clip_id = clip_ids(bundle)[0]
    resign_manifest(bundle, station, clip_id, _set("file.mtime", "7" * length))
    assert _findings(bundle, clip_id, "manifest-field") == [
        f"manifest-field: file.mtime is {shown}, not an RFC 3339 time"]


def test_a_manifest_that_is_not_an_object_is_named(bundle: Path, station: Path) -> None:
    """Rule: a signed manifest that is JSON but not an object is named as such."""
    clip_id = clip_ids(bundle)[0]
    sign_manifest(bundle, station, clip_id, canonicalize(["bwc.manifest/v1"]))
    assert _findings(bundle, clip_id, "manifest-field", "manifest-canonical") == [
        "manifest-field: manifest is not an object"]


def test_a_manifest_payload_that_is_not_json_is_named(bundle: Path, station: Path) -> None:
    """Rule: signed manifest bytes that are not JSON are named with the parser's reason."""
    clip_id = clip_ids(bundle)[0]
    sign_manifest(bundle, station, clip_id, b"bwc.manifest/v1")
    assert _findings(bundle, clip_id, "manifest-field", "manifest-canonical") == [
        "manifest-canonical: manifest payload is not acceptable JSON: not JSON: Expecting "
        "value at line 1 column 1",
        "manifest-field: manifest is not an object"]


def test_a_manifest_of_another_schema_names_it(bundle: Path, station: Path) -> None:
    """Rule: a manifest whose schema is not bwc.manifest/v1 is named with the schema it
    gives."""
    clip_id = clip_ids(bundle)[0]
    resign_manifest(bundle, station, clip_id, _set("schema", "bwc.manifest/v2"))
    assert _findings(bundle, clip_id, "manifest-field") == [
        "manifest-field: schema is 'bwc.manifest/v2', expected 'bwc.manifest/v1'"]


def test_a_manifest_filed_under_another_clip_names_both_clips(bundle: Path) -> None:
    """Rule: one clip's signed manifest put in another clip's place names the clip it is
    for and the clip it is filed under."""
    first, second = clip_ids(bundle)
    manifests = bundle / "data" / "manifests"
    shutil.copyfile(manifests / f"{second}.dsse.json", manifests / f"{first}.dsse.json")
    assert _findings(bundle, first, "manifest-clip") == [
        f"manifest-clip: manifest names clip {second!r}, but it is filed as {first}"]


def test_a_manifest_naming_another_station_names_it_and_the_certificate_s(
        bundle: Path, station: Path) -> None:
    """Rule: a manifest signed with the station's key that names another station is named
    with both station ids."""
    clip_id = clip_ids(bundle)[0]
    resign_manifest(bundle, station, clip_id, _set("station.id", "ST-0002"))
    assert _findings(bundle, clip_id, "manifest-station") == [
        "manifest-station: manifest names station 'ST-0002', the certificate is for 'ST-0001'"]


def test_a_manifest_sealed_before_the_later_v1_fields_verifies(bundle: Path,
                                                               station: Path) -> None:
    """Rule: officer.status, officer.roster_version and recorded.camera_start/camera_end/
    time_source came to v1 later; a manifest without them verifies, with no warning."""
    clip_id = clip_ids(bundle)[0]
    resign_manifest(bundle, station, clip_id, _unset(
        "officer.status", "officer.roster_version", "recorded.camera_start",
        "recorded.camera_end", "recorded.time_source"))
    report = verify_paths(_pair(bundle, clip_id), cert=bundle / "certs" / "station.pem")
    assert report.ok, report.clips[0].problems
    assert not [w for w in report.warnings if "manifest has fields" in w]


def test_fields_the_verifier_does_not_know_are_a_warning_naming_each_by_path(
        bundle: Path, station: Path) -> None:
    """Rule: fields of a v1 manifest this verifier does not know are one warning naming each
    by its full path; the clip still verifies."""
    clip_id = clip_ids(bundle)[0]

    def add(manifest: dict[str, Any]) -> None:
        manifest["file"]["origin"] = "camera"
        manifest["colour"] = "red"

    resign_manifest(bundle, station, clip_id, add)
    report = verify_paths(_pair(bundle, clip_id), cert=bundle / "certs" / "station.pem")
    assert report.ok, report.clips[0].problems
    assert [w for w in report.warnings if "manifest has fields" in w] == [
        f"{clip_id}: manifest has fields this verifier does not know: file.origin, colour"]


# --- checkpoints --------------------------------------------------------------------------

def _body_with(**changes: Any) -> Any:
    def payload(body: dict[str, Any]) -> bytes:
        body.update(changes)
        return canonicalize({k: v for k, v in body.items() if v is not None})
    return payload


@pytest.mark.parametrize(("payload", "expected"), [
    (lambda body: b"checkpoint", "payload is not acceptable JSON: not JSON: Expecting value at "
                                 "line 1 column 1"),
    (lambda body: json.dumps(body, indent=1).encode(),
     "payload is not in canonical (RFC 8785) form"),
    (lambda body: canonicalize([body]), "payload is not a JSON object"),
    (_body_with(size=-1), "size -1 is not a count"),
    (_body_with(size=True), "size True is not a count"),
    (_body_with(root="AB" * 32), f"root {'AB' * 32!r} is not 64 lowercase hex digits"),
    (_body_with(at="yesterday"), "has no RFC 3339 'at' time"),
    (_body_with(at=None), "has no RFC 3339 'at' time"),
], ids=["not json", "not canonical", "not an object", "negative size", "size true",
        "uppercase root", "time not a time", "no time"])
def test_a_malformed_checkpoint_is_named_with_the_file_and_what_is_wrong(
        bundle: Path, station: Path, payload: Any, expected: str) -> None:
    """Rule: a checkpoint signed with the station's key whose payload is not canonical JSON,
    not an object, or has a size that is no count, a root that is not 64 lowercase hex
    digits or no RFC 3339 time, is named with its file and what is wrong."""
    sign_checkpoint(bundle, station, payload(signed_payload(bundle / CHECKPOINT)))
    report = verify_paths([bundle])
    assert [p for p in report.problems if p.startswith("checkpoint-field:")] == [
        f"checkpoint-field: {CHECKPOINT} {expected}"]
    assert not report.ok


def test_the_empty_log_s_checkpoint_is_well_formed() -> None:
    """Rule: a size counts entries from 0: a checkpoint of the empty log (size 0, the root
    SHA-256 of nothing, FORMATS.md section 6) is well formed."""
    payload = canonicalize({"at": "2025-03-01T08:00:02.000Z",
                            "root": hashlib.sha256(b"").hexdigest(), "size": 0,
                            "station_id": "ST-0001"})
    assert checkpoint_fields(payload, "checkpoint of size 0") == (json.loads(payload), [])


# --- JSON bounds --------------------------------------------------------------------------

def test_json_nested_32_levels_is_read_and_33_levels_are_refused_by_name() -> None:
    """Rule: JSON in a target is read nested up to 32 levels (docs/AUDIT.md section 5);
    deeper is a named refusal naming the file."""
    value, error = parse_json(b"[" * 32 + b"]" * 32, "custody/proofs.json", max_bytes=1000)
    assert error is None and json.dumps(value) == "[" * 32 + "]" * 32
    assert parse_json(b"[" * 33 + b"]" * 33, "custody/proofs.json", max_bytes=1000) == (
        None, "custody/proofs.json is not acceptable JSON: nested deeper than 32 levels")
