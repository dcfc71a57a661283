"""``bwc-agent doctor``: every check a support call starts with, one line each, with what to do.

Each check returns :class:`Finding`\\ s: ``OK``, ``WARN`` (works, but needs
attention soon) or ``FAIL`` (something the station needs is broken), each
with the advice that fixes it.  The checks only read: files are opened
read-only, the store through a read-only connection, the network through
short connections with overall deadlines (the broker gets a CONNECT under
another client id than the daemon's, so the daemon's session is never
taken over).  Where a check needs something this process cannot have (the
clock state under the unit's syscall filter), it says so as a WARN.

The configuration check is agent.preflight, the one start-up check
``run`` and ``config check`` make: doctor never judges the configuration
differently.  Exit status (``bwc-agent doctor``): 2 if that check fails (as
``config check``), else 1 if any check FAILs, else 0.

The same report answers the platform's signed ``doctor`` command
(docs/PROTOCOL.md section 6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Config

log = logging.getLogger(__name__)

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Finding:
    status: str  # OK, WARN, FAIL
    check: str  # which check: "config", "keys", "disk", ...
    text: str  # what was found
    advice: str = ""  # what to do (empty for OK)

    def line(self) -> str:
        advice = f" -> {self.advice}" if self.advice and self.status != OK else ""
        return f"{self.status:<4}  {self.check:<10} {self.text}{advice}"


@dataclass
class Environment:
    """Where the checks look: the machine's root (tests use a directory), clocks, deadlines."""

    root: Path = Path("/")
    deadline_s: float = 10.0
    timedatectl: str = "timedatectl"
    now: Callable[[], float] | None = None

    def etc(self, *parts: str) -> Path:
        return self.root.joinpath("etc", *parts)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    config_failed: bool = False

    @property
    def exit_code(self) -> int:
        if self.config_failed:
            return 2
        return 1 if any(f.status == FAIL for f in self.findings) else 0

    def as_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "findings": [asdict(f) for f in self.findings],
                "counts": {s: sum(1 for f in self.findings if f.status == s)
                           for s in (OK, WARN, FAIL)}}


Check = Callable[[Config, Environment], Iterable[Finding]]


def run(config: Config, env: Environment | None = None, *,
        network: bool = True) -> Report:
    """Every check in the order a support call goes through them."""
    from agent.doctor import local
    from agent.doctor import remote as platform

    environment = env or Environment()
    report = Report()
    checks: list[tuple[str, Check]] = [
        ("config", local.configuration), ("agent", local.daemon), ("keys", local.key_files),
        ("data", local.data_directory), ("disk", local.disk), ("clock", local.clock),
        ("cert", local.certificate), ("platform", local.platform_keys),
        ("mounts", local.mounts), ("store", local.store_integrity),
        ("log", local.log_continuity)]
    if network:
        checks += [("broker", platform.broker), ("upload", platform.upload_server)]
    for name, check in checks:
        try:
            found = list(check(config, environment))
        except Exception as exc:  # a check that breaks is a finding, not the end of doctor
            log.exception("doctor check %s failed", name)
            found = [Finding(FAIL, name, f"the check itself failed: {exc!r}",
                             "report this with `bwc-agent -v doctor` output")]
        report.findings.extend(found)
        if name == "config" and any(f.status == FAIL for f in found):
            report.config_failed = True
    return report
