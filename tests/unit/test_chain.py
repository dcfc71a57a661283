"""Certificate paths with intermediates: validity, CA flags, path lengths, key usages.

Each rule is shown failing with its own problem code, and the good paths are
checked against ``openssl verify`` as the reference.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.custody import keys
from agent.custody.keys import StationKey
from agent.devpki import cert_pem
from agent.pki.chain import validate_chain

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(*, sign: bool = True, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


class CA:
    def __init__(self, cn: str, issuer: CA | None = None, *, ca: bool = True,
                 pathlen: int | None = None, cert_sign: bool = True,
                 days: tuple[int, int] = (-1, 365)) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(cn))
                   .issuer_name(issuer.cert.subject if issuer else _name(cn))
                   .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(NOW + dt.timedelta(days=days[0]))
                   .not_valid_after(NOW + dt.timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None),
                                  critical=True)
                   .add_extension(_usage(sign=False, cert_sign=cert_sign), critical=True))
        self.cert = builder.sign(issuer.key if issuer else self.key, hashes.SHA256())

    def leaf(self, cn: str = "ST-0001", *, sign: bool = True,
             days: tuple[int, int] = (-1, 30)) -> x509.Certificate:
        key = StationKey.generate()
        return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key).serial_number(x509.random_serial_number())
                .not_valid_before(NOW + dt.timedelta(days=days[0]))
                .not_valid_after(NOW + dt.timedelta(days=days[1]))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_usage(sign=sign), critical=True)
                .sign(self.key, hashes.SHA256()))


def _codes(leaf: x509.Certificate, pool: list[x509.Certificate], anchors: list[x509.Certificate],
           at: dt.datetime = NOW) -> list[str]:
    return [p.code for p in validate_chain(leaf, pool, anchors, at).problems]


def test_two_intermediates_chain_to_the_root_in_any_order(tmp_path: Path) -> None:
    root = CA("root", pathlen=2)
    policy = CA("policy", root, pathlen=1)
    issuing = CA("issuing", policy, pathlen=0)
    leaf = issuing.leaf()
    result = validate_chain(leaf, [policy.cert, issuing.cert], [root.cert], NOW)
    assert result.ok, result.texts
    assert result.path == [leaf, issuing.cert, policy.cert, root.cert]
    assert keys.certificate_problems(leaf, NOW, [root.cert], station_id="ST-0001",
                                     intermediates=[issuing.cert, policy.cert]) == []
    (tmp_path / "root.pem").write_bytes(cert_pem(root.cert))
    (tmp_path / "chain.pem").write_bytes(cert_pem(issuing.cert) + cert_pem(policy.cert))
    (tmp_path / "leaf.pem").write_bytes(cert_pem(leaf))
    ok = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "chain.pem",
                         "leaf.pem"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_a_missing_intermediate_is_named() -> None:
    root = CA("root")
    issuing = CA("issuing", root)
    [problem] = validate_chain(issuing.leaf(), [], [root.cert], NOW).problems
    assert problem.code == "no-path"
    assert problem.text == "certificate issuer CN=issuing is not among the 1 trust anchor(s)"


def test_an_issuer_that_is_not_a_ca_is_refused() -> None:
    root = CA("root")
    not_ca = CA("not a ca", root, ca=False)
    assert _codes(not_ca.leaf(), [not_ca.cert], [root.cert]) == ["not-ca"]
    text = validate_chain(not_ca.leaf(), [not_ca.cert], [root.cert], NOW).texts[0]
    assert text == ("intermediate CA CN=not a ca is not a CA certificate (no basicConstraints "
                    "cA TRUE) but issued a certificate")


def test_path_length_constraints_count_the_intermediates_below() -> None:
    root = CA("root", pathlen=0)  # may sign end entities only
    issuing = CA("issuing", root, pathlen=0)
    result = validate_chain(issuing.leaf(), [issuing.cert], [root.cert], NOW)
    assert [p.code for p in result.problems] == ["pathlen"]
    assert result.texts == ["trust anchor CN=root allows 0 intermediate CA(s) below it "
                            "(pathLenConstraint), the path has 1"]
    # An intermediate's own constraint counts the CAs below it, not the ones above.
    top = CA("top", pathlen=2)
    middle = CA("middle", top, pathlen=0)
    below = CA("below", middle, pathlen=0)
    assert _codes(middle.leaf(), [middle.cert], [top.cert]) == []
    assert _codes(below.leaf(), [middle.cert, below.cert], [top.cert]) == ["pathlen"]
    assert validate_chain(below.leaf(), [middle.cert, below.cert], [top.cert], NOW).texts == [
        "intermediate CA CN=middle allows 0 intermediate CA(s) below it (pathLenConstraint), "
        "the path has 1"]


def test_key_usages_of_the_issuer_and_the_leaf() -> None:
    root = CA("root")
    no_cert_sign = CA("issuing", root, cert_sign=False)
    assert _codes(no_cert_sign.leaf(), [no_cert_sign.cert], [root.cert]) == ["usage"]
    issuing = CA("issuing", root)
    assert _codes(issuing.leaf(sign=False), [issuing.cert], [root.cert]) == ["usage"]
    # A CA certificate is no station certificate (and its usage allows no signing).
    assert _codes(issuing.cert, [], [root.cert]) == ["not-ca", "usage"]


def test_validity_of_every_certificate_at_the_signing_time() -> None:
    root = CA("root", days=(-30, 365))
    expired_intermediate = CA("issuing", root, days=(-10, -1))
    leaf = expired_intermediate.leaf()
    assert _codes(leaf, [expired_intermediate.cert], [root.cert]) == ["expired"]
    # The same chain checked at a time inside every window holds.
    at = NOW - dt.timedelta(days=5, hours=12)
    issuing = CA("issuing2", root, days=(-10, 10))
    old_leaf = issuing.leaf(days=(-7, -3))
    assert _codes(old_leaf, [issuing.cert], [root.cert], at) == []
    assert _codes(old_leaf, [issuing.cert], [root.cert]) == ["expired"]
    assert _codes(old_leaf, [issuing.cert], [root.cert], NOW - dt.timedelta(days=8)) == \
        ["not-yet-valid"]


def test_a_forged_issuer_of_the_same_name_does_not_verify() -> None:
    root = CA("root")
    issuing = CA("issuing", root)
    impostor = CA("issuing", root)  # same name, another key
    result = validate_chain(issuing.leaf(), [impostor.cert], [root.cert], NOW)
    assert result.texts == ["certificate signature does not verify against intermediate CA "
                            "CN=issuing"]


@pytest.mark.parametrize("depth", [7, 9])
def test_a_long_chain_is_bounded(depth: int) -> None:
    cas = [CA("root", pathlen=None)]
    for i in range(depth):
        cas.append(CA(f"ca{i}", cas[-1]))
    result = validate_chain(cas[-1].leaf(), [c.cert for c in cas[1:]], [cas[0].cert], NOW)
    assert [p.code for p in result.problems] == ["no-path"]
    assert "no trust anchor within 6 intermediate certificates" in result.texts[0]
