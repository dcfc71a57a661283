"""The verification report: every finding, per clip and in general, never only the first.

Each problem is a string ``"<code>: <details>"``; the codes are stable and
documented in docs/AUDIT.md (``file-digest``, ``signature``, ``log-inclusion``
...).  A clip is OK when it has no problem; the report is OK when no clip
and no general finding is a problem.  Warnings never fail a verification.
A clip's verdict includes its trust: when the station certificate is
missing, invalid or does not chain to ``--trust``, every clip of that
target has a ``trust`` problem; ``trust`` says ``anchored`` (chains to
``--trust``), ``unanchored`` (no ``--trust`` given) or ``failed``.

JSON form (stable)::

    {"ok": bool,
     "clips": [{"clip_id", "name", "ok", "problems": [...], "source", "state", "trust",
                "officer": {...} or null, "cases": [...]}],
     "problems": [...], "warnings": [...],
     "targets": [{"path", "kind"}]}
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

# Control, format (bidirectional overrides, zero-width), line/paragraph separators and
# lone surrogates: none is a visible character, and each can move the cursor, erase a
# line or reorder what a terminal shows.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(text: str) -> str:
    """``text`` for a terminal: every invisible or cursor-moving character as an escape.

    Used for every string of text output that comes from what is verified
    (file names, paths, field values inside findings), so that a name cannot
    forge a verdict line, hide a problem or recolour the screen.  Letters of
    every script, punctuation and spaces are kept; the backslash is doubled,
    so an escape in the output always means one in the input.
    """
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in _INVISIBLE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class ClipResult:
    clip_id: str
    name: str = ""
    source: str = ""
    state: str | None = None
    trust: str | None = None  # anchored / unanchored / failed; None: not assessed
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
                "trust": self.trust, "officer": self.officer, "cases": list(self.cases)}


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
        """The result for ``clip_id`` from ``source``, created on first use; its name is the
        first non-empty ``name`` given for it (a finding made before the clip's record is
        read names no file)."""
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
            lines.append(f"{target['kind']} {escape(target['path'])}")
            for c in (c for c in self.clips if c.source == target["path"]):
                verdict = "OK" if c.ok else "FAILED: " + "; ".join(map(escape, c.problems))
                if c.ok and c.trust == "unanchored":
                    verdict = "OK (certificate not anchored: no --trust)"
                state = f" [{escape(c.state)}]" if c.state else ""
                lines.append(f"  {escape(c.clip_id)}  {escape(c.name) or '?'}{state}: {verdict}")
                if c.officer is not None or c.cases:
                    # Officer names and case IDs come from the bundle too.
                    lines.append("      " + escape(_officer_line(c.officer, c.cases)))
        lines.extend(f"problem: {escape(p)}" for p in self.problems)
        lines.extend(f"warning: {escape(w)}" for w in self.warnings)
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
