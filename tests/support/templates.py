"""A sealed station built once for a test module, or once for a whole mutation run.

Building a station (real clips, a real dock, sealing, an export) takes seconds; a
module-scoped fixture pays that once per test session.  scripts/mutate runs the same
tests once per mutant, each in a fresh process: there, with ``BWC_TEST_TEMPLATES``
naming a directory, the first run builds the station into it (with the code as it
is, no mutant active) and every later run copies it, rewriting the absolute paths
its configuration files hold.  Nothing changes when the variable is unset.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

ENV = "BWC_TEST_TEMPLATES"


def built_once(name: str, tmp_path_factory: pytest.TempPathFactory,
               build: Callable[[Path], None]) -> Path:
    """A directory ``build(base)`` filled: built here, or copied from the run's template."""
    fresh = tmp_path_factory.mktemp(name)
    cache = os.environ.get(ENV)
    if not cache:
        build(fresh)
        return fresh
    built = Path(cache) / name
    if not (built / ".built").exists():
        shutil.rmtree(built, ignore_errors=True)
        built.mkdir(parents=True)
        build(built)
        (built / ".built").touch()
    shutil.copytree(built, fresh, symlinks=True, dirs_exist_ok=True)
    for toml in fresh.rglob("*.toml"):
        text = toml.read_text(encoding="utf-8")
        toml.write_text(text.replace(str(built), str(fresh)), encoding="utf-8")
    return fresh
