"""The verification report: every finding, per clip and in general, never only the first.

Each problem is a string ``"<code>: <details>"``; the codes are stable and
documented in docs/AUDIT.md (``file-digest``, ``signature``, ``log-inclusion``
...).  A clip is OK when it has no problem; the report is OK when no clip
and no general finding is a problem.  Warnings never fail a verification.

JSON form (stable)::

    {"ok": bool,
     "clips": [{"clip_id", "name", "ok", "problems": [...], "source", "state",
                "officer": {...} or null, "cases": [...]}],
     "problems": [...], "warnings": [...],
     "targets": [{"path", "kind"}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClipResult:
    clip_id: str
    name: str = ""
    source: str = ""
    state: str | None = None
    problems: list[str] = field(default_factory=list)
    # Who recorded it and for which cases (agent/officers/audit.py), where known.
    officer: dict[str, Any] | None = None
    cases: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {"clip_id": self.clip_id, "name": self.name, "ok": self.ok,
                "problems": list(self.problems), "source": self.source, "state": self.state,
                "officer": self.officer, "cases": list(self.cases)}


@dataclass
class Report:
    clips: list[ClipResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    targets: list[dict[str, str]] = field(default_factory=list)
    # Figures for people (bytes hashed, seconds): printed, not part of the verdict.
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.clips)

    def clip(self, clip_id: str, source: str, name: str = "") -> ClipResult:
        """The result for ``clip_id`` from ``source``, created on first use."""
        for result in self.clips:
            if result.clip_id == clip_id and result.source == source:
                if name and not result.name:
                    result.name = name
                return result
        result = ClipResult(clip_id=clip_id, name=name, source=source)
        self.clips.append(result)
        return result

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def warning(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def count(self, name: str, value: float) -> None:
        self.stats[name] = self.stats.get(name, 0) + value

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "clips": [c.as_dict() for c in self.clips],
                "problems": list(self.problems), "warnings": list(self.warnings),
                "targets": list(self.targets)}

    def render(self) -> str:
        """Text for people: one verdict line per clip, then general findings, then a verdict."""
        lines: list[str] = []
        for target in self.targets:
            lines.append(f"{target['kind']} {target['path']}")
            for c in (c for c in self.clips if c.source == target["path"]):
                verdict = "OK" if c.ok else "FAILED: " + "; ".join(c.problems)
                state = f" [{c.state}]" if c.state else ""
                lines.append(f"  {c.clip_id}  {c.name or '?'}{state}: {verdict}")
                if c.officer is not None or c.cases:
                    lines.append("      " + _officer_line(c.officer, c.cases))
        lines.extend(f"problem: {p}" for p in self.problems)
        lines.extend(f"warning: {w}" for w in self.warnings)
        failed = sum(1 for c in self.clips if not c.ok)
        if self.ok:
            lines.append(f"VERIFIED: {len(self.clips)} clip(s) OK, {len(self.warnings)} warning(s)")
        else:
            lines.append(f"NOT VERIFIED: {failed} of {len(self.clips)} clip(s) failed, "
                         f"{len(self.problems)} general problem(s)")
        return "\n".join(lines)


def _officer_line(officer: dict[str, Any] | None, cases: list[str]) -> str:
    """``officer 000001 张三, credential C-1: valid; cases: A, B`` for one clip."""
    text = "officer -"
    if officer is not None:
        text = f"officer {officer.get('id') or '-'}"
        if officer.get("name"):
            text += f" {officer['name']}"
        if officer.get("credential_id"):
            text += f", credential {officer['credential_id']}"
        text += f": {officer.get('status')}"
        if officer.get("revoked_since"):
            text += f" (revoked since {officer['revoked_since']['revoked_at']})"
    return f"{text}; cases: {', '.join(cases) or 'none'}"
