"""``bwc-agent verify <bundle>``: the BagIt layer an auditor relies on, word for word.

RFC 8493 as docs/FORMATS.md describes the bundle: which files are read and which refused
(links, FIFOs, entries that cannot be examined or listed), the manifests' lines, files
outside the layout, Payload-Oxum and the bag-info.txt fields; and the custody log's inclusion
proofs an auditor checks each entry against (custody/proofs.json).  One station is built per
module (tests/support/stations.rotated_station: two clips, a key rotation, an officer's
case tag, so the bundle holds every kind of file the layout names); each test changes its
own copy of the bundle and checks the exact findings (docs/AUDIT.md section 5).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.custody.jcs import canonicalize
from agent.verify import Report, verify_paths
from agent.verify.files import LIMITS
from tests.support.bundles import clip_ids, copy_bundle, relist, sign_checkpoint, signed_payload
from tests.support.stations import rotated_station
from tests.support.templates import built_once


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("rotated-station", tmp_path_factory, rotated_station)


@pytest.fixture
def bundle(station: Path, tmp_path: Path) -> Path:
    return copy_bundle(station, tmp_path)


def _clip_problems(report: Report, clip_id: str) -> list[str]:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return list(result.problems)


def _clip_dir(bundle: Path) -> tuple[str, Path]:
    clip_id = clip_ids(bundle)[0]
    return clip_id, bundle / "data" / "clips" / clip_id


def _payload_oxum(bundle: Path) -> str:
    files = [p for p in (bundle / "data").rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files)}.{len(files)}"


def _bag_info_without(bundle: Path, label: str) -> None:
    info = bundle / "bag-info.txt"
    lines = info.read_text(encoding="utf-8").splitlines(keepends=True)
    info.write_text("".join(line for line in lines if not line.startswith(f"{label}:")),
                    encoding="utf-8")
    relist(bundle, "bag-info.txt")


def _unlisted_warning(bundle: Path, rel: str, listed: bool) -> str:
    return (f"{bundle}: {rel} is not part of a bwc.bundle/v1 bundle"
            f"{' (listed in a BagIt manifest)' if listed else ''}; its content is not checked")


# --- what a clean bundle says ------------------------------------------------------------

def test_a_whole_bundle_warns_only_that_its_certificate_is_unanchored(bundle: Path) -> None:
    """Rule: every file the layout names (tag files, certificates of retired keys, officers
    and cases, clips and manifests) is known; bag-info.txt names bwc.bundle/v1; the only
    warning left is the certificate without --trust."""
    assert (bundle / "certs" / "keys").is_dir() and (bundle / "cases").is_dir()
    report = verify_paths([bundle])
    assert report.ok, report.problems
    assert len(report.warnings) == 1, report.warnings
    assert report.warnings[0].startswith(f"{bundle}: station certificate "), report.warnings


# --- files outside the layout ------------------------------------------------------------

def test_a_file_outside_the_layout_is_a_warning_saying_whether_a_manifest_lists_it(
        bundle: Path) -> None:
    """Rule: a file the layout does not name is a warning; it says '(listed in a BagIt
    manifest)' when the tag or the payload manifest lists it, and nothing when neither
    does."""
    (bundle / "notes.txt").write_text("listed\n", encoding="utf-8")
    relist(bundle, "notes.txt")
    (bundle / "stray.txt").write_text("unlisted\n", encoding="utf-8")
    (bundle / "data" / "extra.bin").write_bytes(b"payload")
    payload = bundle / "manifest-sha256.txt"
    payload.write_text(payload.read_text(encoding="utf-8")
                       + f"{hashlib.sha256(b'payload').hexdigest()}  data/extra.bin\n",
                       encoding="utf-8")
    relist(bundle, "manifest-sha256.txt")
    report = verify_paths([bundle])
    unexpected = [w for w in report.warnings if "is not part of a" in w]
    assert unexpected == [_unlisted_warning(bundle, "data/extra.bin", True),
                          _unlisted_warning(bundle, "notes.txt", True),
                          _unlisted_warning(bundle, "stray.txt", False)]


# --- links, FIFOs, entries that cannot be examined or listed -----------------------------

def test_a_link_in_a_clip_directory_is_named_under_that_clip(bundle: Path) -> None:
    """Rule: a symbolic link is never followed; the finding, under the clip its path names,
    says it is one and that a bundle holds regular files only."""
    clip_id, clip_dir = _clip_dir(bundle)
    (clip_dir / "link.MP4").symlink_to("/etc/hostname")
    rel = f"data/clips/{clip_id}/link.MP4"
    problems = _clip_problems(verify_paths([bundle]), clip_id)
    assert (f"bag-format: {rel} is a symbolic link; a bundle holds regular files only "
            "(not followed)") in problems


def test_a_fifo_is_named_under_its_clip_and_never_opened(bundle: Path) -> None:
    """Rule: a FIFO is not a regular file: named under the clip its path names, and a FIFO
    where the station certificate belongs is refused with what it is."""
    clip_id, clip_dir = _clip_dir(bundle)
    os.mkfifo(clip_dir / "pipe.MP4")
    cert = bundle / "certs" / "station.pem"
    cert.unlink()
    os.mkfifo(cert)
    report = verify_paths([bundle])
    assert (f"bag-format: data/clips/{clip_id}/pipe.MP4 is not a regular file"
            in _clip_problems(report, clip_id))
    assert "bag-format: certs/station.pem is not a regular file" in report.problems
    assert (f"cert-missing: {bundle}: no usable station certificate: certs/station.pem is a "
            "FIFO, not a regular file (not read)") in report.problems


def _too_deep(start: Path, names: tuple[str, ...]) -> str:
    """Directories below ``start`` down to a path just under PATH_MAX, holding ``names``
    (empty files) whose paths are over it; returns the deepest directory, relative."""
    path_max = os.pathconf("/", "PC_PATH_MAX")
    fd = os.open(start, os.O_RDONLY | os.O_DIRECTORY)
    parts: list[str] = []
    try:
        while len(str(start)) + sum(len(p) + 1 for p in parts) < path_max - 150:
            parts.append(f"{len(parts):02d}" + "d" * 140)
            os.mkdir(parts[-1], dir_fd=fd)
            inner = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return "/".join(parts)


def test_an_entry_that_cannot_be_examined_is_named_under_its_clip(bundle: Path) -> None:
    """Rule: an entry whose status cannot be read (its path longer than the system takes)
    is named with the reason under the clip its path names, and the entries after it in the
    same directory are still examined."""
    clip_id, clip_dir = _clip_dir(bundle)
    first, second = "a" + "x" * 200, "b" + "x" * 200
    deep = f"data/clips/{clip_id}/{_too_deep(clip_dir, (first, second))}"
    problems = _clip_problems(verify_paths([bundle]), clip_id)
    for name in (first, second):
        assert (f"bag-format: {deep}/{name} cannot be examined: File name too long"
                in problems), problems


def _without_dac_override() -> None:
    """This thread loses the capabilities that let root read any directory (capabilities
    are per thread on Linux; the others keep theirs)."""
    if os.geteuid() != 0:
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
    data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()


def test_a_directory_that_cannot_be_listed_is_named_with_the_reason(bundle: Path) -> None:
    """Rule: a directory the verifier may not list is a bag-format finding naming it and
    why; the clip file it hides is missing, not silently skipped."""
    clip_id, clip_dir = _clip_dir(bundle)
    (name,) = [p.name for p in clip_dir.iterdir()]
    clip_dir.chmod(0)
    reports: list[Report] = []

    def verify() -> None:
        _without_dac_override()
        reports.append(verify_paths([bundle]))

    worker = threading.Thread(target=verify)
    worker.start()
    worker.join()
    clip_dir.chmod(0o755)
    (report,) = reports
    assert f"bag-format: cannot list {clip_dir}: Permission denied" in report.problems
    assert (f"bag-missing: data/clips/{clip_id}/{name} is listed in manifest-sha256.txt but "
            "missing from the bundle") in _clip_problems(report, clip_id)


# --- tag files ---------------------------------------------------------------------------

def test_a_linked_or_missing_tag_file_is_named_as_such(bundle: Path, tmp_path: Path) -> None:
    """Rule: a tag file that is a link says it cannot be read and why; a missing one is
    named missing only (there is nothing to read)."""
    (tmp_path / "info.txt").write_bytes((bundle / "bag-info.txt").read_bytes())
    (bundle / "bag-info.txt").unlink()
    report = verify_paths([bundle])
    assert "bag-missing: bag-info.txt is missing" in report.problems
    assert not [p for p in report.problems if p.startswith("bag-format: cannot read")], \
        report.problems
    (bundle / "bag-info.txt").symlink_to(tmp_path / "info.txt")
    report = verify_paths([bundle])
    assert ("bag-format: cannot read bag-info.txt is a symbolic link (not followed)"
            in report.problems)
    assert "bag-missing: bag-info.txt is missing" in report.problems


def test_a_payload_manifest_over_a_tag_files_limit_is_still_read(bundle: Path) -> None:
    """Rule: manifest-sha256.txt may be up to 64 MiB (a bundle of many clips), more than
    the 1 MiB of other tag files: one of 2 MiB is read and checked."""
    payload = bundle / "manifest-sha256.txt"
    payload.write_text(payload.read_text(encoding="utf-8") + "\n" * (2 * LIMITS["small"]),
                       encoding="utf-8")
    relist(bundle, "manifest-sha256.txt")
    report = verify_paths([bundle])
    assert report.ok, report.problems


def test_a_malformed_manifest_line_is_named_by_its_file_and_line(bundle: Path) -> None:
    """Rule: a manifest line that is not '<sha256 hex>  <path>' is named by its manifest's
    file name and line number."""
    payload = bundle / "manifest-sha256.txt"
    lines = payload.read_text(encoding="utf-8").splitlines()
    payload.write_text("\n".join([*lines, "not a digest  data/x"]) + "\n", encoding="utf-8")
    relist(bundle, "manifest-sha256.txt")
    report = verify_paths([bundle])
    assert (f"bag-format: manifest-sha256.txt line {len(lines) + 1} is not '<sha256 hex>  "
            "<path>': 'not a digest  data/x'") in report.problems


def test_every_payload_line_outside_data_is_named(bundle: Path) -> None:
    """Rule: each payload manifest line naming a file outside data/ is a bag-format finding
    of its own, and the lines after it are still checked."""
    payload = bundle / "manifest-sha256.txt"
    text = payload.read_text(encoding="utf-8")
    payload.write_text(text + f"{'a' * 64}  README.txt\n{'b' * 64}  bagit.txt\n",
                       encoding="utf-8")
    relist(bundle, "manifest-sha256.txt")
    clip_id, clip_dir = _clip_dir(bundle)
    (clip_file,) = clip_dir.iterdir()
    clip_file.write_bytes(clip_file.read_bytes() + b"x")
    report = verify_paths([bundle])
    for rel in ("README.txt", "bagit.txt"):
        assert (f"bag-format: manifest-sha256.txt lists {rel}, which is not under data/"
                in report.problems), rel
    rel = clip_file.relative_to(bundle).as_posix()
    assert any(p.startswith(f"bag-digest: {rel} has SHA-256 ")
               for p in _clip_problems(report, clip_id))


# --- bag-info.txt ------------------------------------------------------------------------

def test_a_missing_payload_oxum_is_named_with_what_the_payload_is(bundle: Path) -> None:
    """Rule: without a Payload-Oxum the finding says none is declared ([]) and gives the
    payload's octets.files."""
    _bag_info_without(bundle, "Payload-Oxum")
    report = verify_paths([bundle])
    assert (f"bag-oxum: bag-info.txt declares Payload-Oxum [], the payload is "
            f"{_payload_oxum(bundle)} (octets.files): files were added, removed or resized"
            ) in report.problems


def test_a_bag_info_without_the_bundle_format_is_a_warning(bundle: Path) -> None:
    """Rule: a bag-info.txt that names no Bwc-Bundle-Format is warned as [] against the
    format this verifier reads."""
    _bag_info_without(bundle, "Bwc-Bundle-Format")
    report = verify_paths([bundle])
    assert report.ok, report.problems
    assert (f"{bundle}: bag-info.txt Bwc-Bundle-Format is [], this verifier reads "
            "bwc.bundle/v1") in report.warnings


# --- JSON and certificates named by their file -------------------------------------------

def test_a_checkpoint_that_is_not_json_is_named_by_its_file(bundle: Path) -> None:
    """Rule: a checkpoint file that is no JSON is named, with the parser's reason, by its
    path in the bundle."""
    (bundle / "custody" / "checkpoint.dsse.json").write_bytes(b"{not json")
    report = verify_paths([bundle])
    assert any(p.startswith("checkpoint-missing: custody/checkpoint.dsse.json: "
                            "custody/checkpoint.dsse.json is not acceptable JSON: ")
               for p in report.problems), report.problems


def test_a_station_certificate_that_is_no_pem_is_named_for_the_bundle(bundle: Path) -> None:
    """Rule: certs/station.pem holding no certificate is cert-invalid for the bundle it is
    in, naming the file."""
    (bundle / "certs" / "station.pem").write_bytes(b"not a certificate")
    report = verify_paths([bundle])
    assert any(p.startswith(f"cert-invalid: {bundle}: certs/station.pem is not a usable PEM "
                            "certificate: ") for p in report.problems), report.problems


# --- the log's proofs --------------------------------------------------------------------

PROOFS = "custody/proofs.json"


def _change_proofs(bundle: Path, change: Callable[[dict[int, dict[str, Any]]], None]) -> None:
    """custody/proofs.json with ``change`` applied to its proofs by seq, listed again."""
    path = bundle / PROOFS
    doc = json.loads(path.read_bytes())
    by_seq = {proof["seq"]: proof for proof in doc["entries"]}
    change(by_seq)
    doc["entries"] = [by_seq[seq] for seq in sorted(by_seq)]
    path.write_text(json.dumps(doc), encoding="utf-8")
    relist(bundle, PROOFS)


def _first_seqs(bundle: Path) -> dict[str, int]:
    """Each clip's first seq in the bundle's log."""
    firsts: dict[str, int] = {}
    for line in (bundle / "custody" / "entries.jsonl").read_bytes().splitlines():
        entry = json.loads(line)
        if entry["clip_id"] is not None:
            firsts.setdefault(entry["clip_id"], entry["seq"])
    return firsts


def test_each_entry_without_its_proof_is_named_under_its_clip(bundle: Path) -> None:
    """Rule: every log entry needs its inclusion proof; each one without is named under its
    clip, and the entries after it are still checked."""
    firsts = _first_seqs(bundle)
    _change_proofs(bundle, lambda proofs: [proofs.pop(seq) for seq in firsts.values()])
    report = verify_paths([bundle])
    for clip_id, seq in firsts.items():
        assert (f"log-inclusion: seq {seq} has no inclusion proof in {PROOFS}"
                in _clip_problems(report, clip_id)), clip_id


def test_a_proof_for_another_leaf_is_named_under_its_clip(bundle: Path) -> None:
    """Rule: a proof's leaf_index must be seq - 1 and its leaf_hash the entry's leaf; each
    difference is named with both values under the entry's clip."""
    clip_id, seq = next(iter(_first_seqs(bundle).items()))
    leaf = json.loads((bundle / PROOFS).read_bytes())["entries"]
    (made_for,) = [p["leaf_hash"] for p in leaf if p["seq"] == seq]

    def change(proofs: dict[int, dict[str, Any]]) -> None:
        proofs[seq]["leaf_index"] = 99
        proofs[seq]["leaf_hash"] = "ab" * 32

    _change_proofs(bundle, change)
    problems = _clip_problems(verify_paths([bundle]), clip_id)
    assert (f"log-order: the proof for seq {seq} is for leaf index 99, not {seq - 1} "
            "(entries renumbered or moved)") in problems
    assert (f"log-leaf: seq {seq} hashes to {made_for}, the proof was made for leaf "
            f"{'ab' * 32} (the entry was edited)") in problems


def test_an_altered_inclusion_path_is_named_under_its_clip(bundle: Path) -> None:
    """Rule: an entry whose inclusion path does not lead to the checkpoint root is named
    with its leaf index and the checkpoint's size."""
    clip_id, seq = next(iter(_first_seqs(bundle).items()))
    size = json.loads((bundle / PROOFS).read_bytes())["checkpoint"]["size"]

    def change(proofs: dict[int, dict[str, Any]]) -> None:
        proofs[seq]["inclusion_proof"][0] = "00" * 32

    _change_proofs(bundle, change)
    assert (f"log-inclusion: seq {seq} (leaf index {seq - 1}) is not included under the "
            f"checkpoint root (size {size}): the entry or its proof was altered"
            in _clip_problems(verify_paths([bundle]), clip_id))


def test_without_a_checkpoint_every_entry_is_named_unproven(bundle: Path) -> None:
    """Rule: with no usable signed checkpoint, each entry is named under its clip as having
    nothing to be proven against."""
    (bundle / "custody" / "checkpoint.dsse.json").unlink()
    report = verify_paths([bundle])
    for clip_id, seq in _first_seqs(bundle).items():
        assert (f"log-inclusion: seq {seq}: no usable signed checkpoint to prove it against"
                in _clip_problems(report, clip_id)), clip_id


def test_a_checkpoint_naming_another_station_establishes_no_inclusion(
        station: Path, bundle: Path) -> None:
    """Rule: a checkpoint signed by the station's key but naming another station is a
    checkpoint-field finding with both names, and no entry's inclusion rests on it."""
    rel = "custody/checkpoint.dsse.json"
    payload = signed_payload(bundle / rel)
    payload["station_id"] = "ST-9999"
    sign_checkpoint(bundle, station, canonicalize(payload))
    relist(bundle, rel)
    report = verify_paths([bundle])
    assert ("checkpoint-field: checkpoint names station 'ST-9999', the certificate is for "
            "'ST-0001'") in report.problems
    for clip_id, seq in _first_seqs(bundle).items():
        assert (f"log-inclusion: seq {seq} leads to a checkpoint that does not verify, so its "
                "inclusion is not established" in _clip_problems(report, clip_id)), clip_id


def test_a_proof_without_its_entry_is_named_under_the_clip_it_names(bundle: Path) -> None:
    """Rule: a proof whose entry is gone is log-missing; under the clip its clip_id names
    when that is a clip id, for the bundle otherwise (another name, not a string)."""
    clip_id = clip_ids(bundle)[0]

    def change(proofs: dict[int, dict[str, Any]]) -> None:
        template = next(iter(proofs.values()))
        for seq, owner in ((97, 5), (98, "not-a-clip"), (99, clip_id)):
            proofs[seq] = {**template, "seq": seq, "leaf_index": seq - 1, "clip_id": owner}

    _change_proofs(bundle, change)
    report = verify_paths([bundle])

    def missing(seq: int) -> str:
        return (f"log-missing: {PROOFS} has a proof for seq {seq} but custody/entries.jsonl "
                "has no such entry (an entry was removed)")

    assert missing(99) in _clip_problems(report, clip_id)
    for seq in (97, 98):
        assert missing(seq) in report.problems, seq
        assert not any(missing(seq) in c.problems for c in report.clips), seq


# --- the log's lines ---------------------------------------------------------------------

ENTRIES = "custody/entries.jsonl"


def test_every_bad_log_line_is_named_by_its_number(bundle: Path) -> None:
    """Rule: each line of entries.jsonl that is no JSON, no log entry, or not exactly the
    entry's canonical form is named by its number (the last under the clip it names, when
    that is a clip id), and the lines after it are still read."""
    path = bundle / ENTRIES
    lines = path.read_bytes().splitlines()
    clip_line = next(i for i, line in enumerate(lines) if json.loads(line)["clip_id"])
    clip_entry = json.loads(lines[clip_line])
    other = json.loads(lines[-1])
    other["clip_id"] = "not-a-clip"
    lines[clip_line] = json.dumps(clip_entry).encode()  # ", " and ": ": not RFC 8785
    lines[-1] = json.dumps(other).encode()
    lines[1:1] = [b"{not json", b"", b'{"seq": 1}']  # a blank line is skipped
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify_paths([bundle])
    assert any(p.startswith(f"log-format: {ENTRIES} line 2 payload is not acceptable JSON: ")
               for p in report.problems), report.problems
    assert (f"log-format: {ENTRIES} line 4 is not a log entry {{seq, at, kind, clip_id, body}}"
            in report.problems)

    def not_canonical(number: int) -> str:
        return (f"log-format: {ENTRIES} line {number} payload is not in canonical (RFC 8785) "
                "form: a log line must be exactly the entry's canonical form")

    clip_number = clip_line + 1 + (3 if clip_line >= 1 else 0)
    assert not_canonical(clip_number) in _clip_problems(report, clip_entry["clip_id"])
    assert not_canonical(len(lines)) in report.problems


def test_a_missing_log_is_named(bundle: Path) -> None:
    """Rule: a bundle without custody/entries.jsonl is log-missing, saying why."""
    (bundle / ENTRIES).unlink()
    report = verify_paths([bundle])
    assert (f"log-missing: {ENTRIES} is missing or unreadable: {ENTRIES} is missing"
            in report.problems)
