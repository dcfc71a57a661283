"""constraints.txt pins every package bwc-agent and its tests use, at the versions tested here."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
FIX = "run scripts/lock, then scripts/test, and commit constraints.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_canonical(name)] = version
    return pins


def _used(dist: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution ``dist`` (with ``extras``) needs here, transitively."""
    seen: set[str] = set()
    todo = [(dist, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = _canonical(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_every_dependency_is_pinned_at_the_installed_version() -> None:
    pins = _pins()
    used = _used("bwc-agent", frozenset({"test"}))
    assert used, "bwc-agent's requirements could not be read"
    unpinned = sorted(used - set(pins))
    assert not unpinned, f"not in constraints.txt: {', '.join(unpinned)}; {FIX}"
    differ = {name: (pins[name], metadata.version(name)) for name in sorted(used)
              if metadata.version(name) != pins[name]}
    assert not differ, f"installed versions differ from constraints.txt {differ}; {FIX}"


def test_the_build_backend_is_pinned() -> None:
    assert {"setuptools", "setuptools-scm", "wheel"} <= set(_pins())
