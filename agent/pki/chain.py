"""Certificate path validation: a leaf, through intermediates, up to a trust anchor.

Used when the agent loads its own certificates (agent/pki/identity.py), when
it checks a certificate an EST server issued (agent/pki/enroll.py) and by
``verify`` (agent/verify/chain.py).  What it checks, for a path
``leaf, intermediate…, anchor`` (RFC 5280 section 6, the parts that matter
for a closed PKI):

- every certificate is valid at the given time (``at``: the signing time for
  an auditor, now for the agent);
- each certificate's signature verifies under the next one's public key;
- every issuer (intermediates and the anchor) has basicConstraints cA TRUE,
  keyCertSign in its keyUsage, and a pathLenConstraint (if any) not smaller
  than the number of intermediates below it;
- the leaf is not a CA and has digitalSignature in its keyUsage.

The path is built by name and signature, never by trusting a keyid or the
order of the files; loops are impossible (a certificate is used once) and the
depth is bounded.  A leaf that is itself a trust anchor (a pinned,
self-signed development certificate) is valid without a path.

Problems come as :class:`Problem` (a code and a text for people).  Codes:
``expired``, ``not-yet-valid``, ``no-path`` (no issuer found, or its
signature does not verify), ``not-ca`` (an issuer that is not a CA, or a CA
as leaf), ``pathlen``, ``usage``.  Following RFC 5280, a keyUsage extension
is checked where it is present; its absence restricts nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography import x509

__all__ = ["MAX_DEPTH", "ChainResult", "Problem", "issued_by", "validate_chain",
           "validity_problems"]

# Intermediates followed at most; real PKIs use one or two.
MAX_DEPTH = 6


class Problem(NamedTuple):
    code: str
    text: str


@dataclass
class ChainResult:
    """The path found (leaf first, anchor last; empty if none) and every problem."""

    path: list[x509.Certificate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.problems]

    def has(self, code: str) -> bool:
        return any(p.code == code for p in self.problems)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def validity_problems(cert: x509.Certificate, at: dt.datetime, what: str) -> list[Problem]:
    """``expired`` / ``not-yet-valid`` if ``at`` is outside the certificate's validity."""
    when = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    if when < cert.not_valid_before_utc:
        return [Problem("not-yet-valid", f"{what} {_name(cert)} is not yet valid: valid from "
                        f"{cert.not_valid_before_utc.isoformat()}, checked at "
                        f"{when.isoformat()}")]
    if when > cert.not_valid_after_utc:
        return [Problem("expired", f"{what} {_name(cert)} expired at "
                        f"{cert.not_valid_after_utc.isoformat()}, checked at "
                        f"{when.isoformat()}")]
    return []


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError: all mean "not issued by"
        return False
    return True


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _leaf_problems(leaf: x509.Certificate, what: str) -> list[Problem]:
    problems = []
    constraints = _basic_constraints(leaf)
    if constraints is not None and constraints.ca:
        problems.append(Problem("not-ca", f"{what} {_name(leaf)} is a CA certificate "
                                "(basicConstraints cA TRUE), not an end-entity certificate"))
    usage = _key_usage(leaf)
    if usage is not None and not usage.digital_signature:
        problems.append(Problem("usage", f"{what} {_name(leaf)}: its keyUsage does not allow "
                                "digitalSignature"))
    return problems


def _issuer_problems(cert: x509.Certificate, below: int, role: str) -> list[Problem]:
    """Checks of a CA certificate with ``below`` intermediate CAs between it and the leaf."""
    problems = []
    constraints = _basic_constraints(cert)
    if constraints is None or not constraints.ca:
        problems.append(Problem("not-ca", f"{role} {_name(cert)} is not a CA certificate "
                                "(no basicConstraints cA TRUE) but issued a certificate"))
    elif constraints.path_length is not None and below > constraints.path_length:
        problems.append(Problem("pathlen", f"{role} {_name(cert)} allows "
                                f"{constraints.path_length} intermediate CA(s) below it "
                                f"(pathLenConstraint), the path has {below}"))
    usage = _key_usage(cert)
    if usage is not None and not usage.key_cert_sign:
        problems.append(Problem("usage", f"{role} {_name(cert)}: its keyUsage does not allow "
                                "keyCertSign, but it issued a certificate"))
    return problems


def _no_issuer(current: x509.Certificate, depth: int, pool: Sequence[x509.Certificate],
               anchors: Sequence[x509.Certificate], what: str) -> Problem:
    who = what if depth == 0 else f"intermediate CA {_name(current)}:"
    issuer = current.issuer.rfc4514_string()
    anchor = next((a for a in anchors if a.subject == current.issuer), None)
    if anchor is not None:
        return Problem("no-path", f"{who} signature does not verify against trust anchor "
                       f"{issuer}")
    if any(c.subject == current.issuer for c in pool):
        return Problem("no-path", f"{who} signature does not verify against intermediate CA "
                       f"{issuer}")
    among = f"the {len(anchors)} trust anchor(s)"
    if pool:
        among += f" or the {len(pool)} intermediate certificate(s)"
    return Problem("no-path", f"{who} issuer {issuer} is not among {among}")


def validate_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: dt.datetime,
    *,
    what: str = "certificate",
) -> ChainResult:
    """Build and check the path from ``leaf`` to one of ``anchors`` at time ``at``."""
    result = ChainResult()
    result.problems.extend(validity_problems(leaf, at, what))
    result.problems.extend(_leaf_problems(leaf, what))
    if leaf in anchors:
        result.path = [leaf]  # pinned (a self-signed development certificate)
        return result
    path = [leaf]
    pool = [c for c in intermediates if c != leaf and c not in anchors]
    while True:
        current = path[-1]
        anchor = next((a for a in anchors if issued_by(current, a)), None)
        if anchor is not None:
            path.append(anchor)
            break
        issuer = next((c for c in pool if c not in path and issued_by(current, c)), None)
        if issuer is None:
            result.problems.append(_no_issuer(current, len(path) - 1, pool, anchors, what))
            return result
        if len(path) > MAX_DEPTH:
            result.problems.append(Problem("no-path", f"{what} {_name(leaf)}: no trust anchor "
                                           f"within {MAX_DEPTH} intermediate certificates"))
            return result
        path.append(issuer)
    for index, cert in enumerate(path[1:], start=1):
        role = "trust anchor" if index == len(path) - 1 else "intermediate CA"
        result.problems.extend(validity_problems(cert, at, role))
        result.problems.extend(_issuer_problems(cert, index - 1, role))
    result.path = path
    return result
