"""``bwc-agent verify <data dir>``: the rules an auditor or IT staff rely on, one forgery each.

One station is built per module (tests/support/stations.rotated_station: a clip sealed
under the first key, a key rotation, a clip sealed under the new key); each test
damages its own copy of the data directory the way someone with the station's keys
could, and checks that the verifier names exactly what is wrong, word for word, for the
right clip, and nothing it should not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.devpki import DevCA
from agent.store.db import SCHEMA_VERSION
from agent.vault import Vault
from agent.verify import Report, checks, verify_paths
from agent.verify.files import Unreadable
from tests.support.stations import rotated_station
from tests.support.templates import built_once


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("rotated-station", tmp_path_factory, rotated_station)


@pytest.fixture
def data(station: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(station / "data", copy, symlinks=True)
    return copy


# --- helpers -----------------------------------------------------------------------------

@contextmanager
def _db(data: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(data / "state.db")
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def _clips(data: Path) -> list[dict[str, Any]]:
    """The clips in the order they were sealed: the old key's first, the new key's second."""
    with _db(data) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT clip_id, name, sha256, size, state, manifest FROM clips "
                            "ORDER BY sealed_at").fetchall()
    return [dict(r) for r in rows]


def _checkpoints(data: Path) -> list[dict[str, Any]]:
    """Each checkpoint's signed body, smallest first."""
    with _db(data) as conn:
        rows = conn.execute("SELECT envelope FROM checkpoints ORDER BY size").fetchall()
    return [json.loads(dsse.b64decode(json.loads(env)["payload"])) for (env,) in rows]


def _seq_of(data: Path, kind: str, clip_id: str | None = None) -> int:
    with _db(data) as conn:
        (seq,), = conn.execute("SELECT seq FROM custody_log WHERE kind = ? AND "
                               "(clip_id = ? OR ? IS NULL)", (kind, clip_id, clip_id))
    return int(seq)


def _new_key(data: Path) -> StationKey:
    return StationKey.load(data / "keys" / "station.key")


def _old_keyid(data: Path) -> str:
    (pem,) = (data / "keys" / "archive").glob("*.pem")
    return pem.stem


def _problems(report: Report) -> list[str]:
    return [*report.problems, *(p for c in report.clips for p in c.problems)]


def _clip(report: Report, clip_id: str) -> Any:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return result


def _resign_manifest(data: Path, clip: dict[str, Any], change: dict[str, Any], *,
                     payload_type: str = dsse.MANIFEST, canonical: bool = True) -> None:
    """Store ``clip``'s manifest with ``change`` merged in, signed by the station's (new) key."""
    manifest = json.loads(dsse.b64decode(json.loads(clip["manifest"])["payload"]))
    for name, value in change.items():
        if isinstance(value, dict):
            manifest[name] = {**manifest[name], **value}
        else:
            manifest[name] = value
    payload = canonicalize(manifest) if canonical else json.dumps(manifest, indent=1).encode()
    envelope = dsse.sign_envelope(payload_type, payload, [_new_key(data)])
    with _db(data) as conn:
        conn.execute("UPDATE clips SET manifest = ? WHERE clip_id = ?",
                     (json.dumps(envelope), clip["clip_id"]))


def _certificate(key: StationKey, start: dt.datetime, end: dt.datetime) -> bytes:
    """A self-signed station certificate for ``key`` valid from ``start`` to ``end``."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwc-agent station"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "ST-0001")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(bytes.fromhex(key.keyid)), critical=False)
            .sign(key.private_key, None))
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the pristine directory --------------------------------------------------------------

def test_a_rotated_station_verifies_with_the_certificate_warning_alone(data: Path) -> None:
    """Rule: a station's directory whose clips were sealed before and after a key rotation
    verifies, each clip named by its file name and state; when the newest checkpoint covers
    the whole log and vault/incoming is empty, the only warning is the unanchored
    certificate."""
    report = verify_paths([data])
    assert report.ok, _problems(report)
    assert len(report.warnings) == 1, report.warnings
    assert report.warnings[0].startswith(f"{data}: station certificate CN=ST-0001,O=bwc-agent "
                                         "station is self-signed / not anchored")
    assert [(c.clip_id, c.name, c.state) for c in report.clips] == \
        [(c["clip_id"], c["name"], "sealed") for c in sorted(_clips(data),
                                                             key=lambda c: c["clip_id"])]
    assert (data / "vault" / "incoming").is_dir()


def test_a_database_of_another_schema_is_refused_and_left_as_it_is(data: Path) -> None:
    """Rule: the verifier opens the database read-only: one of an older schema is a named
    refusal (start the daemon to migrate it), and the verifier does not migrate it."""
    older = SCHEMA_VERSION - 1
    with _db(data) as conn:
        conn.execute(f"PRAGMA user_version = {older}")
    os.chmod(data / "state.db", 0o640)
    report = verify_paths([data])
    assert report.problems == [f"store: {data / 'state.db'}: schema version {older}, this "
                               f"agent reads {SCHEMA_VERSION}; start the daemon once to "
                               "migrate it"]
    assert not report.ok and report.clips == []
    with _db(data) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == older
    assert (data / "state.db").stat().st_mode & 0o777 == 0o640


# --- the station's certificates ----------------------------------------------------------

def test_a_missing_station_certificate_is_named_for_the_directory(data: Path) -> None:
    """Rule: without keys/station.pem every signature is unchecked, and the directory's
    finding says which directory lacks its certificate."""
    (data / "keys" / "station.pem").unlink()
    report = verify_paths([data])
    assert any(p.startswith(f"cert-missing: {data}: no usable station certificate: ")
               for p in report.problems), report.problems
    assert {c.trust for c in report.clips} == {"failed"}


def test_an_unusable_archived_certificate_is_named(data: Path) -> None:
    """Rule: a file in keys/archive/ that holds no certificate is named, with the directory."""
    (data / "keys" / "archive" / "garbage.pem").write_bytes(b"not a certificate")
    report = verify_paths([data])
    assert any(p.startswith(f"rotation-cert: {data}: keys/archive/garbage.pem holds no usable "
                            "station certificate: ") for p in report.problems), report.problems


def test_the_retired_key_must_chain_to_trust_too(data: Path, tmp_path: Path) -> None:
    """Rule: with --trust, the certificate of the key a rotation retired is checked against
    that trust, not against itself: a self-signed old key fails under a CA."""
    ca = DevCA(tmp_path / "ca")
    report = verify_paths([data], trust=ca.cert_path)
    seq = _seq_of(data, "key.rotated")
    prefix = (f"rotation-cert: {data}: rotation at seq {seq}: certificate of the old key "
              f"{_old_keyid(data)}: ")
    assert any(p.startswith(prefix) for p in report.problems), report.problems


def test_a_certificate_that_expired_after_the_signatures_is_a_warning(data: Path) -> None:
    """Rule: the certificate is judged at the time the newest checkpoint was signed: one
    that expired since is a warning naming when, not a failure."""
    key = _new_key(data)
    with _db(data) as conn:
        (size, root), = conn.execute("SELECT size, root FROM checkpoints ORDER BY size DESC "
                                     "LIMIT 1")
        body = {"station_id": "ST-0001", "size": size, "root": root,
                "at": "2020-06-01T00:00:00.000Z"}
        envelope = dsse.sign_envelope(dsse.CHECKPOINT, canonicalize(body), [key])
        conn.execute("UPDATE checkpoints SET envelope = ?, at = ? WHERE size = ?",
                     (json.dumps(envelope), body["at"], size))
    (data / "keys" / "station.pem").write_bytes(_certificate(
        key, dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2021, 1, 1, tzinfo=dt.UTC)))
    report = verify_paths([data])
    assert report.ok, _problems(report)
    assert (f"{data}: the station certificate expired at 2021-01-01T00:00:00+00:00, after the "
            "signatures were made") in report.warnings


# --- the log -----------------------------------------------------------------------------

def test_an_unreadable_body_is_hashed_as_null_for_the_roots_it_names(data: Path) -> None:
    """Rule: an entry whose body is no JSON counts as an entry with a null body: the
    checkpoint finding names the root the log gives that way (an auditor can recompute it)."""
    with _db(data) as conn:
        conn.execute("UPDATE custody_log SET body = 'not json' WHERE seq = 1")
        rows = conn.execute("SELECT seq, at, kind, clip_id, body FROM custody_log "
                            "ORDER BY seq").fetchall()
    leaves = [merkle.leaf_hash(canonicalize({
        "seq": seq, "at": at, "kind": kind, "clip_id": clip_id,
        "body": None if seq == 1 else json.loads(body)})) for seq, at, kind, clip_id, body in rows]
    first = _checkpoints(data)[0]
    report = verify_paths([data])
    assert (f"checkpoint-root: the log's first {first['size']} entries hash to "
            f"{merkle.root(leaves[:first['size']]).hex()}, the checkpoint signed at "
            f"{first['at']} says {first['root']}: the log was changed after it was signed") \
        in report.problems


def test_an_entry_that_cannot_be_hashed_is_named_and_its_stored_leaf_kept(data: Path) -> None:
    """Rule: an entry whose body can no longer be put in canonical form (a NaN) is named
    by seq (log-format, log-leaf); the tree keeps the leaf stored when it was logged, so
    the checkpoints over it are not reported as changed."""
    with _db(data) as conn:
        conn.execute("UPDATE custody_log SET body = '{\"offset\": NaN}' WHERE seq = 2")
        kind, = conn.execute("SELECT kind FROM custody_log WHERE seq = 2").fetchone()
    report = verify_paths([data])
    assert [p for p in report.problems if not p.startswith("log-")] == []
    assert report.problems == [
        "log-format: seq 2 cannot be canonicalized: number nan is not finite; canonical JSON "
        "has no NaN or Infinity",
        f"log-leaf: seq 2 ({kind}) no longer hashes to the leaf stored when it was logged: "
        "the entry was edited"]


def test_an_entry_that_cannot_be_hashed_beside_an_emptied_leaf_is_named(data: Path) -> None:
    """Rule: an entry that cannot be put in canonical form was never logged as it is now:
    log-leaf even when its stored leaf was emptied too, and the tree counts that leaf as
    32 zero bytes, so each checkpoint over it names the root an auditor can recompute."""
    with _db(data) as conn:
        conn.execute("UPDATE custody_log SET body = '{\"offset\": NaN}', leaf = X'' "
                     "WHERE seq = 2")
        kind, = conn.execute("SELECT kind FROM custody_log WHERE seq = 2").fetchone()
        leaves = [bytes(leaf) or bytes(32) for leaf, in
                  conn.execute("SELECT leaf FROM custody_log ORDER BY seq")]
    report = verify_paths([data])
    assert report.problems[:2] == [
        "log-format: seq 2 cannot be canonicalized: number nan is not finite; canonical JSON "
        "has no NaN or Infinity",
        f"log-leaf: seq 2 ({kind}) no longer hashes to the leaf stored when it was logged: "
        "the entry was edited"]
    for checkpoint in _checkpoints(data):
        if checkpoint["size"] >= 2:
            assert (f"checkpoint-root: the log's first {checkpoint['size']} entries hash to "
                    f"{merkle.root(leaves[:checkpoint['size']]).hex()}, the checkpoint signed "
                    f"at {checkpoint['at']} says {checkpoint['root']}: the log was changed "
                    "after it was signed") in report.problems, checkpoint


def test_a_missing_transition_is_named_under_its_clip(data: Path) -> None:
    """Rule: a clip's state change removed from the log is named under that clip, with the
    state the entry before leaves and the one the next entry starts from."""
    clip = _clips(data)[1]["clip_id"]
    copying = _seq_of(data, "clip.copying", clip)
    with _db(data) as conn:
        conn.execute("DELETE FROM custody_log WHERE seq = ?", (copying,))
    report = verify_paths([data])
    assert (f"log-history: seq {copying + 1} moves the clip from 'copying', but the entries "
            "before it leave it 'discovered' (an entry is missing or out of order)") in \
        _clip(report, clip).problems


def test_a_clip_the_log_never_mentions_is_named(data: Path) -> None:
    """Rule: a clip of the database with no entry in the log is named twice under it: its
    state leads nowhere ('unknown') and no clip.sealed entry names its manifest."""
    clip = _clips(data)[1]["clip_id"]
    with _db(data) as conn:
        conn.execute("DELETE FROM custody_log WHERE clip_id = ?", (clip,))
    problems = _clip(verify_paths([data]), clip).problems
    assert "log-state: the database says sealed, the log's history leaves the clip unknown" \
        in problems
    assert "log-link: no clip.sealed entry with a manifest_sha256 for this clip" in problems


# --- checkpoints -------------------------------------------------------------------------

def test_every_checkpoint_is_checked_after_one_that_cannot_be_read(data: Path) -> None:
    """Rule: a checkpoint that is no JSON, or carries no payload, is named and the next ones
    are still checked."""
    signed = _checkpoints(data)
    sizes = [c["size"] for c in signed]
    with _db(data) as conn:
        conn.execute("UPDATE checkpoints SET envelope = '{' WHERE size = ?", (sizes[0],))
        conn.execute("UPDATE checkpoints SET envelope = ? WHERE size = ?",
                     (json.dumps({"payloadType": dsse.CHECKPOINT, "signatures": []}),
                      sizes[1]))
        conn.execute("UPDATE checkpoints SET root = ? WHERE size = ?", ("00" * 32, sizes[2]))
    report = verify_paths([data])
    assert any(p.startswith(f"checkpoint-field: checkpoint of size {sizes[0]}: envelope is "
                            "not JSON: ") for p in report.problems), report.problems
    assert any(p.startswith(f"signature: checkpoint of size {sizes[1]}: ")
               for p in report.problems), report.problems
    assert (f"checkpoint-field: checkpoint of size {sizes[2]}: the signed payload says size "
            f"{sizes[2]} root {signed[2]['root']}, the table row differs") in \
        report.problems


def test_a_checkpoint_signed_by_another_key_is_named_by_its_size(data: Path) -> None:
    """Rule: a checkpoint whose signature is not the station's is named by its size."""
    newest = _checkpoints(data)[-1]
    forged = dsse.sign_envelope(dsse.CHECKPOINT, canonicalize(newest), [StationKey.generate()])
    with _db(data) as conn:
        conn.execute("UPDATE checkpoints SET envelope = ? WHERE size = ?",
                     (json.dumps(forged), newest["size"]))
    report = verify_paths([data])
    signature = [p for p in report.problems if p.startswith("signature: ")]
    assert signature and all(p.startswith(f"signature: checkpoint of size {newest['size']}: ")
                             for p in signature), report.problems


def test_each_checkpoint_beyond_a_cut_log_is_named(data: Path) -> None:
    """Rule: when entries are removed from the log's end, every checkpoint that covered them
    is named, each with its size and signing time."""
    checkpoints = _checkpoints(data)
    keep = checkpoints[1]["size"]
    with _db(data) as conn:
        conn.execute("DELETE FROM custody_log WHERE seq > ?", (keep,))
    report = verify_paths([data])
    for cp in checkpoints[2:]:
        assert (f"checkpoint-beyond: checkpoint of size {cp['size']} signed at {cp['at']} "
                f"covers {cp['size']} entries, the log has only {keep}: entries were removed "
                "from its end") in report.problems


# --- the vault ---------------------------------------------------------------------------

def test_a_file_out_of_place_in_the_vault_is_named(data: Path) -> None:
    """Rule: only vault/sha256/<2 hex>/<2 hex>/<64 hex> is an object: a well-named object
    in the wrong directory, and a badly named file in the right shape, are both named."""
    objects = data / "vault" / "sha256"
    sha = _clips(data)[0]["sha256"]
    (objects / sha).write_bytes(Vault(data / "vault").path_for(sha).read_bytes())
    bad = "zz" * 32
    (objects / "zz" / "zz").mkdir(parents=True)
    (objects / "zz" / "zz" / bad).write_bytes(b"x")
    report = verify_paths([data])
    assert f"vault-format: unexpected file vault/sha256/{sha}" in report.problems
    assert f"vault-format: unexpected file vault/sha256/zz/zz/{bad}" in report.problems


def test_a_corrupt_vault_object_names_what_its_bytes_hash_to(data: Path) -> None:
    """Rule: a clip whose vault bytes changed is named with the object and the SHA-256 the
    bytes have now."""
    clip = _clips(data)[0]
    obj = Vault(data / "vault").path_for(clip["sha256"])
    obj.chmod(0o644)
    raw = bytearray(obj.read_bytes())
    raw[10] ^= 0xFF
    obj.write_bytes(bytes(raw))
    now = hashlib.sha256(bytes(raw)).hexdigest()
    assert (f"vault-digest: vault object {clip['sha256']} reads back as {now}: the clip's "
            "bytes on this station are corrupt") in _clip(verify_paths([data]),
                                                         clip["clip_id"]).problems


def test_a_vault_object_that_cannot_be_read_is_named_with_the_reason(
        data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a vault object the disk cannot read back is named under its clip with the
    reason.  (A failing disk cannot be made here: the read of that one object fails.)"""
    clip = _clips(data)[0]
    broken = Vault(data / "vault").path_for(clip["sha256"])
    real = checks.hash_file

    def hash_file(path: Path, *, follow: bool = False) -> tuple[str, int]:
        if path == broken:
            raise Unreadable(f"{path}: Input/output error")
        return real(path, follow=follow)

    monkeypatch.setattr(checks, "hash_file", hash_file)
    assert (f"vault-digest: vault object {clip['sha256']}: {broken}: Input/output error") in \
        _clip(verify_paths([data]), clip["clip_id"]).problems


def test_an_intact_object_no_clip_names_is_no_finding(data: Path) -> None:
    """Rule: an object whose bytes hash to its name is not a finding even when no clip
    refers to it (only a damaged one is)."""
    stray = b"an object no clip refers to"
    name = hashlib.sha256(stray).hexdigest()
    path = data / "vault" / "sha256" / name[:2] / name[2:4] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stray)
    report = verify_paths([data])
    assert report.ok, _problems(report)


# --- manifests ---------------------------------------------------------------------------

def test_every_field_of_a_resigned_manifest_that_disagrees_is_named(data: Path) -> None:
    """Rule: a manifest re-signed with the station's own key still fails on every field
    that disagrees with the clip, the certificate, the vault bytes and the log, each named;
    a field the verifier does not know is a warning naming the clip."""
    clip, other = _clips(data)[1], _clips(data)[0]
    fake_sha = "ab" * 32
    _resign_manifest(data, clip, {"clip_id": other["clip_id"], "extra": 1,
                                  "station": {"key_id": "cd" * 32},
                                  "file": {"size": clip["size"] + 1,
                                           "digests": {"sha256": fake_sha}}})
    report = verify_paths([data])
    problems = _clip(report, clip["clip_id"]).problems
    seq = _seq_of(data, "clip.sealed", clip["clip_id"])
    for expected in (
            f"manifest-clip: manifest names clip {other['clip_id']!r}, but it is filed as "
            f"{clip['clip_id']}",
            f"manifest-station: manifest names key {'cd' * 32!r}, the certificate's keyid is "
            f"{_new_key(data).keyid}",
            f"file-size: file is {clip['size']} bytes, the manifest says {clip['size'] + 1}",
            f"file-digest: file SHA-256 is {clip['sha256']}, the manifest says {fake_sha}",
            f"manifest-db: the manifest says SHA-256 {fake_sha}, the database {clip['sha256']}",
            f"log-link: clip.sealed (seq {seq}) records clip SHA-256 {clip['sha256']}, the "
            f"manifest says {fake_sha}"):
        assert expected in problems, problems
    assert any(p.startswith(f"log-link: clip.sealed (seq {seq}) records manifest SHA-256 ")
               for p in problems), problems
    assert f"{clip['clip_id']}: manifest has fields this verifier does not know: extra" in \
        report.warnings


def test_a_manifest_signed_as_another_payload_type_is_named(data: Path) -> None:
    """Rule: a station signature made for another payload type (a checkpoint) does not sign
    a manifest; the finding says it is the manifest's."""
    clip = _clips(data)[1]
    _resign_manifest(data, clip, {}, payload_type=dsse.CHECKPOINT)
    problems = _clip(verify_paths([data]), clip["clip_id"]).problems
    signature = [p for p in problems if p.startswith("signature: ")]
    assert signature and all(p.startswith("signature: manifest: ") for p in signature), problems


def test_a_manifest_not_in_canonical_form_is_named(data: Path) -> None:
    """Rule: a signed manifest must be its own RFC 8785 form (what the hand steps hash)."""
    clip = _clips(data)[1]
    _resign_manifest(data, clip, {}, canonical=False)
    assert "manifest-canonical: manifest payload is not in canonical (RFC 8785) form" in \
        _clip(verify_paths([data]), clip["clip_id"]).problems


def test_a_clip_signed_before_the_rotation_needs_the_old_key(data: Path) -> None:
    """Rule: the key that must have signed a manifest is the one in force at its
    clip.sealed entry: the first clip's manifest re-signed with the new key fails."""
    clip = _clips(data)[0]
    _resign_manifest(data, clip, {})
    problems = _clip(verify_paths([data]), clip["clip_id"]).problems
    assert any(p.startswith("signature: manifest: ") for p in problems), problems
