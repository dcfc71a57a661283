"""DSSE v1: PAE bytes, the spec's test vector, envelopes, and every rejection reason."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.custody import dsse
from agent.custody.keys import StationKey
from agent.errors import IntegrityError


def test_pae_matches_the_spec_example() -> None:
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_bytes_not_characters() -> None:
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "
    assert dsse.pae("t\u00e9", b"\x00 \xff") == b"DSSEv1 3 t\xc3\xa9 3 \x00 \xff"
    assert dsse.pae(dsse.MANIFEST, b"{}") == \
        b"DSSEv1 36 application/vnd.bwc.manifest.v1+json 2 {}"


def test_spec_test_vector_verifies() -> None:
    # protocol.md "Test Vectors": ECDSA P-256/SHA-256, signature as raw r||s;
    # DER-encoded here, the form openssl and this module use.
    public_key = ec.EllipticCurvePublicNumbers(
        46950820868899156662930047687818585632848591499744589407958293238635476079160,
        5640078356564379163099075877009565129882514886557779369047442380624545832820,
        ec.SECP256R1(),
    ).public_key()
    raw = base64.b64decode(
        "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    envelope = {"payload": "aGVsbG8gd29ybGQ=", "payloadType": "http://example.com/HelloWorld",
                "signatures": [{"sig": base64.b64encode(der).decode()}]}
    assert dsse.verify_envelope(envelope, {"spec": public_key}) == b"hello world"
    envelope["payload"] = base64.b64encode(b"hello World").decode()
    assert dsse.envelope_problems(envelope, {"spec": public_key}) == [
        "signature 0: signature does not verify (bytes altered, or signed by another key)",
        "no signature by a trusted key verifies",
    ]


@pytest.fixture(scope="module")
def station() -> StationKey:
    return StationKey.generate()


@pytest.fixture(scope="module")
def other() -> StationKey:
    return StationKey.generate()


def _envelope(key: StationKey, payload: bytes = b'{"clip_id":"x"}',
              payload_type: str = dsse.MANIFEST) -> dict[str, Any]:
    return dsse.sign_envelope(payload_type, payload, [key])


def test_sign_envelope_shape(station: StationKey) -> None:
    envelope = _envelope(station)
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert envelope["payloadType"] == "application/vnd.bwc.manifest.v1+json"
    assert base64.b64decode(envelope["payload"], validate=True) == b'{"clip_id":"x"}'
    [signature] = envelope["signatures"]
    assert signature["keyid"] == station.keyid
    sig = base64.b64decode(signature["sig"], validate=True)
    station.public_key.verify(sig, dsse.pae(dsse.MANIFEST, b'{"clip_id":"x"}'))  # raises if not
    json.dumps(envelope)  # plain JSON types only


def test_round_trip_and_expected_type(station: StationKey) -> None:
    envelope = _envelope(station, b"\x00binary\xff", dsse.CHECKPOINT)
    trusted = {station.keyid: station.public_key}
    assert dsse.verify_envelope(envelope, trusted) == b"\x00binary\xff"
    assert dsse.verify_envelope(envelope, trusted, dsse.CHECKPOINT) == b"\x00binary\xff"
    assert dsse.envelope_problems(envelope, trusted, dsse.CHECKPOINT) == []


def test_wrong_payload_type_is_named(station: StationKey) -> None:
    envelope = _envelope(station, payload_type=dsse.ACK)
    with pytest.raises(IntegrityError) as err:
        dsse.verify_envelope(envelope, {station.keyid: station.public_key}, dsse.COMMAND)
    assert str(err.value) == (
        "DSSE envelope rejected: payloadType is 'application/vnd.bwc.ack.v1+json', "
        "expected 'application/vnd.bwc.command.v1+json'")


def test_relabelled_payload_type_breaks_the_signature(station: StationKey) -> None:
    # PAE binds the type: an ack cannot be replayed as a command.
    envelope = _envelope(station, payload_type=dsse.ACK)
    envelope["payloadType"] = dsse.COMMAND
    with pytest.raises(IntegrityError, match="signature does not verify"):
        dsse.verify_envelope(envelope, {station.keyid: station.public_key}, dsse.COMMAND)


def test_unknown_keyid(station: StationKey, other: StationKey) -> None:
    envelope = _envelope(station)
    with pytest.raises(IntegrityError) as err:
        dsse.verify_envelope(envelope, {other.keyid: other.public_key})
    assert f"signature 0 (keyid {station.keyid}): keyid is not among the 1 trusted key(s)" \
        in str(err.value)


def test_keyid_is_a_hint_not_trust(station: StationKey, other: StationKey) -> None:
    # A signature by an untrusted key labelled with a trusted keyid fails.
    envelope = _envelope(other)
    envelope["signatures"][0]["keyid"] = station.keyid
    problems = dsse.envelope_problems(envelope, {station.keyid: station.public_key})
    assert problems[0] == (f"signature 0 (keyid {station.keyid}): signature does not verify "
                           "(bytes altered, or signed by another key)")


def test_signature_without_keyid_tries_every_trusted_key(
        station: StationKey, other: StationKey) -> None:
    envelope = _envelope(station)
    del envelope["signatures"][0]["keyid"]
    trusted = {other.keyid: other.public_key, station.keyid: station.public_key}
    assert dsse.verify_envelope(envelope, trusted) == b'{"clip_id":"x"}'
    assert dsse.envelope_problems(envelope, {}) == [
        "signature 0: no keyid and no trusted keys to try", "no signature by a trusted key verifies"]


def test_one_good_signature_among_several_is_enough(
        station: StationKey, other: StationKey) -> None:
    envelope = dsse.sign_envelope(dsse.MANIFEST, b"p", [other, station])
    assert [s["keyid"] for s in envelope["signatures"]] == [other.keyid, station.keyid]
    assert dsse.verify_envelope(envelope, {station.keyid: station.public_key}) == b"p"
    assert dsse.verify_envelope(envelope, {other.keyid: other.public_key}) == b"p"


def test_tampered_payload(station: StationKey) -> None:
    envelope = _envelope(station)
    envelope["payload"] = base64.b64encode(b'{"clip_id":"y"}').decode()
    with pytest.raises(IntegrityError, match=r"signature 0 \(keyid [0-9a-f]{64}\): signature "
                                             r"does not verify.*no signature by a trusted key"):
        dsse.verify_envelope(envelope, {station.keyid: station.public_key})


def test_url_safe_unpadded_base64_is_accepted(station: StationKey) -> None:
    payload = b"\xfb\xff\xfe subjects?"  # encodes with + and / in standard base64
    envelope = _envelope(station, payload)
    assert "+" in envelope["payload"] or "/" in envelope["payload"]
    for field in (envelope, envelope["signatures"][0]):
        key = "payload" if field is envelope else "sig"
        raw = base64.b64decode(field[key])
        field[key] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert dsse.verify_envelope(envelope, {station.keyid: station.public_key}) == payload


def _mutate(envelope: dict[str, Any], how: str) -> Any:
    env = copy.deepcopy(envelope)
    if how == "not an object":
        return [env]
    if how == "no payloadType":
        del env["payloadType"]
    elif how == "payload not base64":
        env["payload"] = "***"
    elif how == "payload missing":
        del env["payload"]
    elif how == "signatures empty":
        env["signatures"] = []
    elif how == "signatures not a list":
        env["signatures"] = {"keyid": "x"}
    elif how == "signature not an object":
        env["signatures"] = ["sig"]
    elif how == "sig not base64":
        env["signatures"][0]["sig"] = "%%%"
    elif how == "keyid not a string":
        env["signatures"][0]["keyid"] = 7
    return env


MALFORMED = {
    "not an object": ["envelope is a list, not a JSON object"],
    "no payloadType": ["envelope has no payloadType string"],
    "payload not base64": ["payload is not valid base64: "],
    "payload missing": ["payload is missing or not a string"],
    "signatures empty": ["envelope has no signatures list, or it is empty"],
    "signatures not a list": ["envelope has no signatures list, or it is empty"],
    "signature not an object": ["signature 0 is a str, not an object",
                                "no signature by a trusted key verifies"],
    "sig not base64": ["signature 0 sig is not valid base64: ",
                       "no signature by a trusted key verifies"],
    "keyid not a string": ["signature 0 has a keyid that is not a string",
                           "no signature by a trusted key verifies"],
}


@pytest.mark.parametrize("how", sorted(MALFORMED))
def test_malformed_envelopes_are_reported_precisely(station: StationKey, how: str) -> None:
    envelope = _mutate(_envelope(station), how)
    trusted = {station.keyid: station.public_key}
    problems = dsse.envelope_problems(envelope, trusted, dsse.MANIFEST)
    # Prefixes: the base64 decoder's own explanation follows and varies by Python version.
    assert len(problems) == len(MALFORMED[how]), problems
    for got, want in zip(problems, MALFORMED[how], strict=True):
        assert got.startswith(want), (got, want)
    with pytest.raises(IntegrityError) as err:
        dsse.verify_envelope(envelope, trusted, dsse.MANIFEST)
    assert str(err.value) == "DSSE envelope rejected: " + "; ".join(problems)


def test_every_problem_is_listed(station: StationKey, other: StationKey) -> None:
    envelope = dsse.sign_envelope(dsse.ACK, b"ack", [other, station])
    envelope["signatures"][1]["sig"] = base64.b64encode(b"\x00" * 64).decode()
    problems = dsse.envelope_problems(
        envelope, {station.keyid: station.public_key}, dsse.COMMAND)
    assert problems == [
        f"payloadType is {dsse.ACK!r}, expected {dsse.COMMAND!r}",
        f"signature 0 (keyid {other.keyid}): keyid is not among the 1 trusted key(s)",
        f"signature 1 (keyid {station.keyid}): signature does not verify "
        "(bytes altered, or signed by another key)",
        "no signature by a trusted key verifies",
    ]


def test_sign_needs_a_signer() -> None:
    with pytest.raises(ValueError, match="at least one signer"):
        dsse.sign_envelope(dsse.MANIFEST, b"x", [])


def test_payload_types_are_distinct_media_types() -> None:
    assert len(dsse.PAYLOAD_TYPES) == 9
    assert dsse.CREDENTIAL == "application/vnd.bwc.officer-credential.v1+json"
    assert dsse.KEY_ROTATION == "application/vnd.bwc.key-rotation.v1+json"
    assert all(t.startswith("application/vnd.bwc.") and t.endswith(".v1+json")
               for t in dsse.PAYLOAD_TYPES)


def test_auditor_verifies_an_envelope_with_openssl(station: StationKey, tmp_path: Path) -> None:
    # What docs/AUDIT.md tells auditors to do: rebuild the PAE bytes by hand
    # and check the signature with the station's public key and openssl.
    envelope = _envelope(station, b'{"clip_id":"0190"}')
    payload = base64.b64decode(envelope["payload"])
    ptype = envelope["payloadType"].encode()
    (tmp_path / "pae.bin").write_bytes(
        b"DSSEv1 " + str(len(ptype)).encode() + b" " + ptype + b" "
        + str(len(payload)).encode() + b" " + payload)
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(envelope["signatures"][0]["sig"]))
    (tmp_path / "pub.pem").write_bytes(station.public_pem())
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin",
           "-in", "pae.bin", "-sigfile", "sig.bin"]
    ok = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "Signature Verified Successfully" in ok.stdout
    (tmp_path / "pae.bin").write_bytes((tmp_path / "pae.bin").read_bytes().replace(b"0190", b"0191"))
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_base64_of_every_length_is_decoded_padded_or_not() -> None:
    """Rule: DSSE fields in standard or URL-safe base64, with or without padding, decode to
    the same bytes; anything else is refused, saying why."""
    for data in (b"", b"a", b"ab", b"abc", b"abcd", b"\xfb\xff\xfe"):
        padded = base64.b64encode(data).decode()
        for text in (padded, padded.rstrip("="), base64.urlsafe_b64encode(data).decode()):
            assert dsse.b64decode(text) == data, text
    with pytest.raises(ValueError) as err:
        dsse.b64decode("Y")
    assert "Invalid" in str(err.value) or "padding" in str(err.value), str(err.value)
    assert str(err.value) != "None"
    problems = dsse.envelope_problems({"payloadType": dsse.ACK, "payload": "a*b",
                                       "signatures": [{"keyid": "", "sig": "AAAA"}]}, {})
    assert problems[0].startswith("payload is not valid base64: ")
    assert problems[0] != "payload is not valid base64: None"


def test_a_signer_is_required_says_so() -> None:
    """Rule: an envelope is never made without a signature."""
    with pytest.raises(ValueError) as err:
        dsse.sign_envelope(dsse.MANIFEST, b"x", [])
    assert str(err.value) == "sign_envelope needs at least one signer"


def test_a_trusted_key_of_an_unsupported_kind_verifies_nothing() -> None:
    """Rule: only Ed25519 and ECDSA keys can verify; a key of another kind in the trust
    map (an RSA key from a mis-set configuration) never makes a signature count."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    envelope = {"payloadType": dsse.ACK, "payload": base64.b64encode(b"{}").decode(),
                "signatures": [{"keyid": "platform", "sig": base64.b64encode(b"x" * 64).decode()}]}
    with pytest.raises(IntegrityError, match="signature does not verify"):
        dsse.verify_envelope(envelope, {"platform": rsa_key})  # type: ignore[dict-item]


class _EcSigner:
    def __init__(self, curve: ec.EllipticCurve, digest: Any) -> None:
        self.key = ec.generate_private_key(curve)
        self.digest = digest
        self.keyid = f"ec-{curve.name}"

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(self.digest))


@pytest.mark.parametrize("curve", ["secp256r1", "secp384r1", "secp521r1"])
def test_ecdsa_platform_keys_verify_with_the_digest_their_curve_pairs_with(curve: str) -> None:
    """Rule: an ECDSA signature is checked with SHA-256 on P-256, SHA-384 on P-384 and
    SHA-512 on P-521 (as openssl and JOSE pair them), and with no other digest."""
    from cryptography.hazmat.primitives import hashes

    pairs: dict[str, tuple[ec.EllipticCurve, Any]] = {
        "secp256r1": (ec.SECP256R1(), hashes.SHA256()),
        "secp384r1": (ec.SECP384R1(), hashes.SHA384()),
        "secp521r1": (ec.SECP521R1(), hashes.SHA512())}
    curve_obj, digest = pairs[curve]
    right = _EcSigner(curve_obj, digest)
    trusted = {right.keyid: right.key.public_key()}
    envelope = dsse.sign_envelope(dsse.COMMAND, b'{"id": "c"}', [right])
    assert dsse.verify_envelope(envelope, trusted, expected_type=dsse.COMMAND) == b'{"id": "c"}'
    for other in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        if other.name == digest.name:
            continue
        wrong = _EcSigner(curve_obj, other)
        wrong.key = right.key
        envelope = dsse.sign_envelope(dsse.COMMAND, b'{"id": "c"}', [wrong])
        assert dsse.envelope_problems(envelope, trusted) != [], other.name
