"""``bwc-agent verify BUNDLE``: the custody log part, word for word.

A forger who rewrites custody/entries.jsonl or custody/proofs.json (or signs a checkpoint
with the station's key) and records the new files in the tag manifest passes the BagIt
check; what the auditor then relies on is the log check: which entry, which proof and
which checkpoint is named, by which code (docs/AUDIT.md section 5), and under which clip.
One station seals and exports one clip (tests/support/stations.exported_station); a
rotated station (rotated_station) gives a checkpoint signed by a retired key.  Each test
changes its own copy of the bundle and runs the verifier in-process.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.verify import Report, verify_paths
from agent.verify.report import ClipResult
from tests.support.bundles import (
    clip_ids,
    copy_bundle,
    relist,
    sign_checkpoint,
    signed_payload,
    station_key,
)
from tests.support.stations import exported_station, rotated_station
from tests.support.templates import built_once

ENTRIES, PROOFS = "custody/entries.jsonl", "custody/proofs.json"
CHECKPOINT, CHECKPOINTS = "custody/checkpoint.dsse.json", "custody/checkpoints.jsonl"
ORDER = "(entries duplicated or out of order)"
_ENTRY_CODES = ("log-order", "log-leaf", "log-inclusion", "log-missing", "log-format")


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("exported-station", tmp_path_factory, exported_station)


@pytest.fixture
def bundle(station: Path, tmp_path: Path) -> Path:
    return copy_bundle(station, tmp_path)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station that rotated its key between two clips: its bundle has earlier checkpoints,
    signed by the retired key and by the new one."""
    return built_once("rotated-station", tmp_path_factory, rotated_station)


def _lines(bundle: Path) -> list[bytes]:
    return (bundle / ENTRIES).read_bytes().splitlines()


def _write_lines(bundle: Path, lines: list[bytes]) -> None:
    (bundle / ENTRIES).write_bytes(b"".join(line + b"\n" for line in lines))
    relist(bundle, ENTRIES)


def _seq_line(bundle: Path, seq: int) -> int:
    """The index in _lines(bundle) of the entry with ``seq``."""
    (index,) = [i for i, line in enumerate(_lines(bundle)) if json.loads(line)["seq"] == seq]
    return index


def _proofs(bundle: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((bundle / PROOFS).read_bytes())
    return doc


def _write_proofs(bundle: Path, doc: dict[str, Any]) -> None:
    (bundle / PROOFS).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    relist(bundle, PROOFS)


def _proof(doc: dict[str, Any], seq: int) -> dict[str, Any]:
    (proof,) = [p for p in doc["entries"] if p["seq"] == seq]
    return proof


def _clip(report: Report, clip_id: str) -> ClipResult:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return result


def _log_findings(result: ClipResult) -> list[str]:
    """The clip's findings on log entries and proofs (its history and seal link apart)."""
    return [p for p in result.problems if p.startswith(_ENTRY_CODES)]


def _checkpoint(bundle: Path) -> dict[str, Any]:
    return signed_payload(bundle / CHECKPOINT)


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(dsse.b64decode(envelope["payload"]))
    return value


def _resign_checkpoint(bundle: Path, station: Path, **change: Any) -> None:
    payload = {**_checkpoint(bundle), **change}
    sign_checkpoint(bundle, station, canonicalize(payload))
    relist(bundle, CHECKPOINT)


# --- order ------------------------------------------------------------------------------

def _with_station_entries(bundle: Path, station: Path) -> None:
    """The bundle's log from seq 1: the station's own entries of no clip (a dock, a clock
    set), which the exporter leaves out, put back with their proofs from the station's log."""
    db = sqlite3.connect(station / "data" / "state.db")
    try:
        rows = db.execute("SELECT seq, at, kind, clip_id, body, leaf FROM custody_log "
                          "ORDER BY seq").fetchall()
    finally:
        db.close()
    size = _checkpoint(bundle)["size"]
    leaves = [bytes(row[5]) for row in rows[:size]]
    own = [row for row in rows if row[3] is None and row[0] <= size]
    assert [row[0] for row in own] == [1, 2]
    lines = [canonicalize({"seq": seq, "at": at, "kind": kind, "clip_id": None,
                           "body": json.loads(body)}) for seq, at, kind, _, body, _ in own]
    _write_lines(bundle, [*lines, *_lines(bundle)])
    doc = _proofs(bundle)
    doc["entries"][:0] = [{"seq": seq, "leaf_index": seq - 1, "leaf_hash": leaves[seq - 1].hex(),
                           "inclusion_proof": [p.hex() for p in
                                               merkle.inclusion_proof(seq - 1, leaves)]}
                          for seq, *_ in own]
    _write_proofs(bundle, doc)


def test_a_log_from_its_very_first_entry_is_in_order(bundle: Path, station: Path) -> None:
    """Rule: seq 1, the log's first entry, comes after nothing: a bundle holding the whole
    log from seq 1 (the station's own entries of no clip, with their proofs) verifies."""
    _with_station_entries(bundle, station)
    report = verify_paths([bundle])
    assert report.problems == [] and [c.problems for c in report.clips] == [[]]
    assert report.ok


def test_entries_out_of_order_name_the_clip_s_highest_seq_before_them(bundle: Path) -> None:
    """Rule: an entry after a higher seq of its clip is a log-order finding for the file
    (line, seq, the highest seq before it) and for the clip, naming the clip's highest seq
    so far, not the one just before it."""
    (clip_id,) = clip_ids(bundle)
    by_seq = {json.loads(line)["seq"]: line for line in _lines(bundle)}
    assert sorted(by_seq) == [3, 4, 5, 6]
    _write_lines(bundle, [by_seq[3], by_seq[6], by_seq[4], by_seq[5]])
    report = verify_paths([bundle])
    assert report.problems == [
        f"log-order: {ENTRIES} line 3 has seq 4 after seq 6 {ORDER}",
        f"log-order: {ENTRIES} line 4 has seq 5 after seq 6 {ORDER}"]
    assert [p for p in _clip(report, clip_id).problems if p.startswith("log-order")] == [
        f"log-order: seq 4 comes after this clip's seq 6 in {ENTRIES} {ORDER}",
        f"log-order: seq 5 comes after this clip's seq 6 in {ENTRIES} {ORDER}"]


# --- proofs -----------------------------------------------------------------------------

def test_an_entry_without_a_proof_is_named_under_its_clip_and_the_rest_are_checked(
        bundle: Path) -> None:
    """Rule: an entry whose proof was removed is a log-inclusion finding of its clip; every
    later entry is still proven (no other finding)."""
    (clip_id,) = clip_ids(bundle)
    doc = _proofs(bundle)
    doc["entries"] = [p for p in doc["entries"] if p["seq"] != 3]
    _write_proofs(bundle, doc)
    report = verify_paths([bundle])
    assert report.problems == []
    assert _clip(report, clip_id).problems == [
        f"log-inclusion: seq 3 has no inclusion proof in {PROOFS}"]


def test_a_proof_for_another_leaf_index_names_the_index_it_should_have(bundle: Path) -> None:
    """Rule: a proof whose leaf_index is not seq - 1 is a log-order finding of the entry's
    clip naming both indexes, and the entry is not proven at the index given."""
    (clip_id,) = clip_ids(bundle)
    doc = _proofs(bundle)
    _proof(doc, 4)["leaf_index"] = 2
    _write_proofs(bundle, doc)
    report = verify_paths([bundle])
    assert report.problems == []
    assert _clip(report, clip_id).problems == [
        "log-order: the proof for seq 4 is for leaf index 2, not 3 (entries renumbered or "
        "moved)",
        "log-inclusion: seq 4 (leaf index 2) is not included under the checkpoint root "
        "(size 6): the entry or its proof was altered"]


def test_an_edited_entry_names_its_leaf_and_the_leaf_its_proof_was_made_for(
        bundle: Path) -> None:
    """Rule: an entry edited after its proof was made is a log-leaf finding naming the hash
    of the entry as it is and the leaf hash the proof records, and a log-inclusion
    finding, both under its clip."""
    (clip_id,) = clip_ids(bundle)
    lines = _lines(bundle)
    index = _seq_line(bundle, 4)
    entry = json.loads(lines[index])
    entry["body"]["attempt"] = 2
    lines[index] = canonicalize(entry)
    _write_lines(bundle, lines)
    leaf = merkle.leaf_hash(lines[index]).hex()
    recorded = _proof(_proofs(bundle), 4)["leaf_hash"]
    report = verify_paths([bundle])
    assert report.problems == []
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-leaf: seq 4 hashes to {leaf}, the proof was made for leaf {recorded} (the "
        "entry was edited)",
        "log-inclusion: seq 4 (leaf index 3) is not included under the checkpoint root "
        "(size 6): the entry or its proof was altered"]


def test_a_proof_whose_entry_was_removed_is_named_under_the_proof_s_clip(
        bundle: Path) -> None:
    """Rule: a proof left without its entry is a log-missing finding filed under the clip
    the proof names."""
    (clip_id,) = clip_ids(bundle)
    lines = _lines(bundle)
    del lines[_seq_line(bundle, 5)]
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    assert report.problems == []
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-missing: {PROOFS} has a proof for seq 5 but {ENTRIES} has no such entry (an "
        "entry was removed)"]


def test_a_proof_naming_no_clip_is_a_general_log_missing_finding(bundle: Path) -> None:
    """Rule: a proof left without its entry whose clip_id is no string, or no clip id, is a
    general log-missing finding: no clip is made up from what a proof names."""
    (clip_id,) = clip_ids(bundle)
    lines = _lines(bundle)
    _write_lines(bundle, lines[:_seq_line(bundle, 5)])
    doc = _proofs(bundle)
    _proof(doc, 5)["clip_id"] = 7
    _proof(doc, 6)["clip_id"] = "DCIM/A.MP4"
    _write_proofs(bundle, doc)
    report = verify_paths([bundle])
    assert [p for p in report.problems if p.startswith("log-")] == [
        f"log-missing: {PROOFS} has a proof for seq {seq} but {ENTRIES} has no such entry "
        "(an entry was removed)" for seq in (5, 6)]
    assert [c.clip_id for c in report.clips] == [clip_id]
    assert _log_findings(_clip(report, clip_id)) == []


def test_proofs_that_are_not_a_json_object_are_named_and_every_entry_is_unproven(
        bundle: Path) -> None:
    """Rule: a custody/proofs.json that is JSON but no object is a general log-missing
    finding saying so; then no entry has a proof."""
    (clip_id,) = clip_ids(bundle)
    (bundle / PROOFS).write_text("[]", encoding="utf-8")
    relist(bundle, PROOFS)
    report = verify_paths([bundle])
    assert report.problems == [f"log-missing: {PROOFS}: not a JSON object"]
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-inclusion: seq {seq} has no inclusion proof in {PROOFS}" for seq in (3, 4, 5, 6)]


def test_proofs_made_for_a_checkpoint_of_the_same_size_and_another_root_are_named(
        bundle: Path) -> None:
    """Rule: the checkpoint custody/proofs.json says it was made for must have the signed
    checkpoint's size and its root: another root alone is a log-inclusion finding."""
    doc = _proofs(bundle)
    doc["checkpoint"]["root"] = "0" * 64
    _write_proofs(bundle, doc)
    report = verify_paths([bundle])
    assert report.problems == [f"log-inclusion: {PROOFS} was made for checkpoint "
                               f"{doc['checkpoint']}, not the signed one (size 6)"]


def test_proof_items_that_are_not_objects_or_have_no_integer_seq_are_passed_over(
        bundle: Path) -> None:
    """Rule: an item of the proofs' entries that is no object, or whose seq is no integer,
    proves nothing: its entry has no proof, and no proof is left over without entry."""
    (clip_id,) = clip_ids(bundle)
    doc = _proofs(bundle)
    _proof(doc, 4)["seq"] = "4"
    doc["entries"].append(5)
    _write_proofs(bundle, doc)
    report = verify_paths([bundle])
    assert report.problems == []
    assert _clip(report, clip_id).problems == [
        f"log-inclusion: seq 4 has no inclusion proof in {PROOFS}"]


# --- the checkpoint the proofs lead to --------------------------------------------------

def test_entries_without_a_usable_checkpoint_each_say_so_under_their_clip(
        bundle: Path, station: Path) -> None:
    """Rule: when the signed checkpoint is unusable (its size is no count), every entry is
    a log-inclusion finding of its clip saying there is nothing to prove it against."""
    (clip_id,) = clip_ids(bundle)
    _resign_checkpoint(bundle, station, size=-1)
    report = verify_paths([bundle])
    assert report.problems == [f"checkpoint-field: {CHECKPOINT} size -1 is not a count"]
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-inclusion: seq {seq}: no usable signed checkpoint to prove it against"
        for seq in (3, 4, 5, 6)]


def test_a_checkpoint_naming_another_station_is_a_checkpoint_field_finding(
        bundle: Path, station: Path) -> None:
    """Rule: a checkpoint signed by the station's key but naming another station is a
    checkpoint-field finding naming both stations."""
    own = _checkpoint(bundle)["station_id"]
    _resign_checkpoint(bundle, station, station_id="other-station")
    report = verify_paths([bundle])
    assert report.problems == [f"checkpoint-field: checkpoint names station 'other-station', "
                               f"the certificate is for {own!r}"]


def test_entries_proven_against_a_checkpoint_that_does_not_verify_are_not_established(
        bundle: Path, station: Path) -> None:
    """Rule: an entry whose proof leads to the root of a checkpoint with a finding (here: it
    names another station) is a log-inclusion finding of its clip: it is not established."""
    (clip_id,) = clip_ids(bundle)
    _resign_checkpoint(bundle, station, station_id="other-station")
    report = verify_paths([bundle])
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-inclusion: seq {seq} leads to a checkpoint that does not verify, so its "
        "inclusion is not established" for seq in (3, 4, 5, 6)]


def test_a_checkpoint_is_checked_against_the_key_in_force_at_its_size(
        rotated: Path, tmp_path: Path) -> None:
    """Rule: after a key rotation, an earlier checkpoint (of the log before the rotation,
    signed by the retired key) given as the bundle's checkpoint is checked against the
    retired key: its signature holds, and what is named is that the proofs were made for
    another checkpoint."""
    bundle = copy_bundle(rotated, tmp_path)
    first = json.loads((bundle / CHECKPOINTS).read_bytes().splitlines()[0])
    (bundle / CHECKPOINT).write_text(json.dumps(first["envelope"]), encoding="utf-8")
    relist(bundle, CHECKPOINT)
    size = _checkpoint(bundle)["size"]
    assert size < _proofs(bundle)["checkpoint"]["size"]
    report = verify_paths([bundle])
    everything = [*report.problems, *(p for c in report.clips for p in c.problems)]
    assert [p for p in everything if p.startswith(("signature", "checkpoint-field"))] == []
    assert report.problems[0] == (f"log-inclusion: {PROOFS} was made for checkpoint "
                                  f"{_proofs(bundle)['checkpoint']}, not the signed one "
                                  f"(size {size})")


# --- lines of the log -------------------------------------------------------------------

def test_a_missing_log_is_named(bundle: Path) -> None:
    """Rule: a bundle without custody/entries.jsonl is a general log-missing finding naming
    the file and why it is not read."""
    (bundle / ENTRIES).unlink()
    report = verify_paths([bundle])
    assert f"log-missing: {ENTRIES} is missing or unreadable: {ENTRIES} is missing" in \
        report.problems


def test_a_blank_line_in_the_log_is_passed_over(bundle: Path) -> None:
    """Rule: empty lines between entries are skipped, the entries after them checked: the
    bundle verifies."""
    lines = _lines(bundle)
    _write_lines(bundle, [lines[0], b"", b"  ", *lines[1:]])
    report = verify_paths([bundle])
    assert report.problems == [] and [c.problems for c in report.clips] == [[]]


def test_a_line_that_is_not_json_is_named_by_its_number_and_later_lines_are_checked(
        bundle: Path) -> None:
    """Rule: a log line that is not JSON is a general log-format finding naming the file and
    line; its proof is then left without entry, and the lines after it are checked."""
    (clip_id,) = clip_ids(bundle)
    lines = _lines(bundle)
    lines[1] = b"{not json"
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    (finding,) = report.problems
    assert finding.startswith(f"log-format: {ENTRIES} line 2 payload is not acceptable JSON: ")
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-missing: {PROOFS} has a proof for seq 4 but {ENTRIES} has no such entry (an "
        "entry was removed)"]


def test_json_that_is_not_a_log_entry_is_named_with_the_fields_an_entry_has(
        bundle: Path) -> None:
    """Rule: a log line that is JSON but not {seq, at, kind, clip_id, body} is a general
    log-format finding listing those fields; the lines after it are checked."""
    (clip_id,) = clip_ids(bundle)
    lines = _lines(bundle)
    entry = json.loads(lines[1])
    del entry["body"]
    lines[1] = canonicalize(entry)
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    assert report.problems == [f"log-format: {ENTRIES} line 2 is not a log entry "
                               "{seq, at, kind, clip_id, body}"]
    assert _log_findings(_clip(report, clip_id)) == [
        f"log-missing: {PROOFS} has a proof for seq 4 but {ENTRIES} has no such entry (an "
        "entry was removed)"]


@pytest.mark.parametrize(("field", "value"), [
    ("seq", True), ("seq", 0), ("seq", "4"), ("at", 5), ("kind", None), ("clip_id", 5),
    ("body", [])])
def test_an_entry_field_of_the_wrong_type_makes_the_line_no_log_entry(
        bundle: Path, field: str, value: Any) -> None:
    """Rule: a log line is an entry only with an integer seq of at least 1 (not a boolean),
    a string at and kind, a clip_id that is a string or null and an object body; any other
    is a general log-format finding."""
    lines = _lines(bundle)
    entry = json.loads(lines[1])
    entry[field] = value
    lines[1] = canonicalize(entry)
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    assert report.problems == [f"log-format: {ENTRIES} line 2 is not a log entry "
                               "{seq, at, kind, clip_id, body}"]


def test_a_line_that_is_not_the_entry_s_canonical_form_is_named_under_its_clip(
        bundle: Path) -> None:
    """Rule: a log line holding an entry in another JSON form than its RFC 8785 one is a
    log-format finding of the entry's clip; the entry itself is still checked (proven)."""
    (clip_id,) = clip_ids(bundle)
    lines = _lines(bundle)
    lines[1] = json.dumps(json.loads(lines[1]), indent=1).replace("\n", "").encode()
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    assert report.problems == []
    assert _clip(report, clip_id).problems == [
        f"log-format: {ENTRIES} line 2 payload is not in canonical (RFC 8785) form: a log "
        "line must be exactly the entry's canonical form"]


def test_a_line_of_no_clip_not_in_canonical_form_is_a_general_finding(
        bundle: Path, station: Path) -> None:
    """Rule: a log line of an entry of no clip (clip_id null) in another JSON form than its
    RFC 8785 one is a general log-format finding; no clip is named."""
    (clip_id,) = clip_ids(bundle)
    _with_station_entries(bundle, station)
    lines = _lines(bundle)
    lines[0] = json.dumps(json.loads(lines[0])).encode()
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    assert report.problems == [
        f"log-format: {ENTRIES} line 1 payload is not in canonical (RFC 8785) form: a log "
        "line must be exactly the entry's canonical form"]
    assert [(c.clip_id, c.problems) for c in report.clips] == [(clip_id, [])]


def test_a_line_naming_no_clip_id_not_in_canonical_form_is_a_general_finding(
        bundle: Path) -> None:
    """Rule: the log-format finding of a line in another JSON form than its RFC 8785 one
    is filed under the entry's clip only when its clip_id is a clip id; a forged clip_id
    (here a camera path) makes it a general finding."""
    lines = _lines(bundle)
    entry = json.loads(lines[1])
    entry["clip_id"] = "DCIM/A.MP4"
    lines[1] = json.dumps(entry).encode()
    _write_lines(bundle, lines)
    report = verify_paths([bundle])
    finding = (f"log-format: {ENTRIES} line 2 payload is not in canonical (RFC 8785) form: a "
               "log line must be exactly the entry's canonical form")
    assert finding in report.problems
    assert [c.clip_id for c in report.clips if finding in c.problems] == []


# --- earlier checkpoints ----------------------------------------------------------------

def _checkpoint_lines(bundle: Path) -> list[bytes]:
    return (bundle / CHECKPOINTS).read_bytes().splitlines()


def _write_checkpoint_lines(bundle: Path, lines: list[bytes]) -> None:
    (bundle / CHECKPOINTS).write_bytes(b"".join(line + b"\n" for line in lines))
    relist(bundle, CHECKPOINTS)


def test_each_earlier_checkpoint_line_is_named_by_its_number_and_the_rest_are_checked(
        rotated: Path, tmp_path: Path) -> None:
    """Rule: every line of custody/checkpoints.jsonl is checked, blank ones passed over, and
    a finding names its line: one that is not JSON, not an object, a checkpoint that is
    not signed, a proof that does not lead to the newest checkpoint (with the earlier
    checkpoint's size and signing time)."""
    bundle = copy_bundle(rotated, tmp_path)
    lines = _checkpoint_lines(bundle)
    altered = json.loads(lines[1])
    altered["consistency_proof"][0] = "0" * 64
    _write_checkpoint_lines(bundle, [lines[0], b"", b"{bad", b"[1]",
                                     json.dumps({"envelope": None}).encode(),
                                     json.dumps(altered).encode(), *lines[2:]])
    old = _payload(altered["envelope"])
    report = verify_paths([bundle])
    assert report.problems[0].startswith(f"checkpoint-field: {CHECKPOINTS} line 3 is not "
                                         "acceptable JSON: ")
    assert report.problems[1:] == [
        f"checkpoint-field: {CHECKPOINTS} line 4 is not a JSON object",
        f"signature: {CHECKPOINTS} line 5: envelope is a NoneType, not a JSON object",
        f"checkpoint-consistency: the checkpoint of size {old['size']} signed at {old['at']} "
        "is not a prefix of the newest (size 16): the log was rewritten between them, or "
        "the proof was altered"]


def test_an_earlier_checkpoint_without_a_consistency_proof_is_not_a_prefix(
        rotated: Path, tmp_path: Path) -> None:
    """Rule: an earlier checkpoint whose consistency proof is missing is a
    checkpoint-consistency finding."""
    bundle = copy_bundle(rotated, tmp_path)
    lines = _checkpoint_lines(bundle)
    item = json.loads(lines[1])
    item["consistency_proof"] = None
    lines[1] = json.dumps(item).encode()
    _write_checkpoint_lines(bundle, lines)
    old = _payload(item["envelope"])
    report = verify_paths([bundle])
    assert report.problems == [
        f"checkpoint-consistency: the checkpoint of size {old['size']} signed at {old['at']} "
        "is not a prefix of the newest (size 16): the log was rewritten between them, or "
        "the proof was altered"]


def test_an_earlier_checkpoint_of_the_newest_size_is_consistent_with_an_empty_proof(
        rotated: Path, tmp_path: Path) -> None:
    """Rule: a checkpoint of the same size and root as the newest (signed again at a later
    stop) is a prefix of it, proven by the empty consistency proof: no finding."""
    bundle = copy_bundle(rotated, tmp_path)
    newest = json.loads((bundle / CHECKPOINT).read_bytes())
    item = {"envelope": newest, "consistency_proof": []}
    _write_checkpoint_lines(bundle, [*_checkpoint_lines(bundle), json.dumps(item).encode()])
    report = verify_paths([bundle])
    assert report.problems == [] and report.ok


def test_another_signature_on_an_earlier_checkpoint_is_a_warning_naming_its_line(
        rotated: Path, tmp_path: Path) -> None:
    """Rule: an earlier checkpoint the station signed that also carries another key's
    signature verifies; the report warns, for the bundle and the line, which signature is
    ignored."""
    bundle = copy_bundle(rotated, tmp_path)
    lines = _checkpoint_lines(bundle)
    item = json.loads(lines[-1])
    other = StationKey.generate()
    item["envelope"] = dsse.sign_envelope(dsse.CHECKPOINT, dsse.b64decode(
        item["envelope"]["payload"]), [station_key(rotated), other])
    lines[-1] = json.dumps(item).encode()
    _write_checkpoint_lines(bundle, lines)
    report = verify_paths([bundle])
    assert report.problems == [] and report.ok
    assert (f"{bundle}: {CHECKPOINTS} line {len(lines)}: signature 1 (keyid {other.keyid}) is "
            "not the station's, or does not verify; it is ignored (only the station's "
            "signature counts)") in report.warnings
