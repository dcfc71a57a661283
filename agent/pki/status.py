"""Facts about the station's certificates, for ``status``, the MQTT status and ``doctor``.

``certificate_status`` reads the files (never the network) and returns plain
JSON-able facts, one block per certificate (``station``: the signing
certificate, ``tls``: the TLS client certificate the platform section names,
if any)::

    {"state": "ok" | "renew-due" | "expiring" | "expired" | "not-yet-valid"
              | "invalid" | "missing" | "unreadable",
     "path", "subject", "issuer", "serial", "keyid", "not_before", "not_after",
     "days_left", "validity_used", "chain": [subjects, leaf first], "problems": [...]}

States, most urgent first: ``missing`` / ``unreadable`` (no usable file),
``invalid`` (the chain to ``keys/ca.pem`` does not hold, or the CN is not
``station.id``), ``expired``, ``not-yet-valid``, ``expiring`` (30 days or
less left), ``renew-due`` (``pki.renew_after`` of the validity used, and an
EST server to renew with), ``ok``.  The whole answer's ``state`` is the most
urgent of the blocks'.  Nothing here raises for a bad file: a support check
must report it, not stop at it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.config import Config
from agent.custody.keys import certificate_station_id, keyid_of
from agent.errors import ConfigError
from agent.pki.chain import validate_chain
from agent.pki.files import KeyFiles
from agent.pki.identity import load_anchors, load_pem_chain

__all__ = ["EXPIRING_DAYS", "STATES", "certificate_status", "certificate_summary"]

EXPIRING_DAYS = 30
STATES = ("missing", "unreadable", "invalid", "expired", "not-yet-valid", "expiring",
          "renew-due", "ok")


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _keyid(cert: x509.Certificate) -> str | None:
    try:
        return keyid_of(cert.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return None


def _block(config: Config, path: Path, anchors: list[x509.Certificate] | None,
           when: dt.datetime) -> dict[str, Any]:
    facts: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        return {**facts, "state": "missing", "problems": [f"{path} does not exist"]}
    try:
        certs = load_pem_chain(path, "certificate")
    except ConfigError as exc:
        return {**facts, "state": "unreadable", "problems": [str(exc)]}
    cert, chain = certs[0], certs[1:]
    lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    used = (when - cert.not_valid_before_utc).total_seconds() / lifetime if lifetime > 0 else 1
    left = (cert.not_valid_after_utc - when).total_seconds() / 86400
    facts.update({"subject": cert.subject.rfc4514_string(),
                  "issuer": cert.issuer.rfc4514_string(), "serial": f"{cert.serial_number:x}",
                  "keyid": _keyid(cert), "not_before": _rfc3339(cert.not_valid_before_utc),
                  "not_after": _rfc3339(cert.not_valid_after_utc),
                  "days_left": round(left, 2), "validity_used": round(max(used, 0.0), 4)})
    problems: list[str] = []
    codes: set[str] = set()
    if cert.issuer == cert.subject:
        anchors = [cert]  # a self-signed development certificate anchors itself
    if anchors is not None:
        result = validate_chain(cert, chain, anchors, when)
        problems.extend(result.texts)
        codes = {p.code for p in result.problems}
        facts["chain"] = [c.subject.rfc4514_string() for c in result.path]
    cn = certificate_station_id(cert)
    if cn != config.station.id:
        problems.append(f"its common name is {cn!r}, station.id is {config.station.id!r}")
        codes.add("station-id")
    facts["problems"] = problems
    if codes - {"expired", "not-yet-valid"}:
        facts["state"] = "invalid"
    elif "expired" in codes or left < 0:
        facts["state"] = "expired"
    elif "not-yet-valid" in codes:
        facts["state"] = "not-yet-valid"
    elif left <= EXPIRING_DAYS:
        facts["state"] = "expiring"
    elif config.pki.est_url is not None and used >= config.pki.renew_after:
        facts["state"] = "renew-due"
    else:
        facts["state"] = "ok"
    return facts


def certificate_status(config: Config, at: dt.datetime | None = None) -> dict[str, Any]:
    """The facts of the module docstring, at ``at`` (default: now)."""
    when = at or dt.datetime.now(dt.UTC)
    files = KeyFiles.of(config.data_dir)
    try:
        anchors = load_anchors(files)
        anchor_problem = None
    except ConfigError as exc:
        anchors, anchor_problem = None, str(exc)
    blocks: dict[str, Any] = {"station": _block(config, files.station_cert, anchors, when)}
    tls = config.platform.cert_file if config.platform is not None else None
    if tls is not None:
        blocks["tls"] = _block(config, tls, anchors, when)
    states = [b["state"] for b in blocks.values()]
    answer: dict[str, Any] = {
        "state": min(states, key=STATES.index),
        "ca_file": str(files.ca_bundle) if files.ca_bundle.exists() else None,
        "est_url": config.pki.est_url,
        "renew_after": config.pki.renew_after,
        **blocks,
    }
    if anchor_problem is not None:
        answer["problems"] = [anchor_problem]
    return answer


def certificate_summary(status: dict[str, Any]) -> str:
    """One line for people: ``certificate: valid until ... (N days left): ok``."""
    station = status["station"]
    if "not_after" not in station:
        return f"certificate: {station['state']} ({'; '.join(station['problems'])})"
    line = (f"certificate: {station['subject']} valid until {station['not_after']} "
            f"({station['days_left']:.0f} days left), issued by {station['issuer']}: "
            f"{station['state']}")
    tls = status.get("tls")
    if tls is not None and tls["state"] != "ok":
        line += f"; TLS certificate: {tls['state']}"
    return line
