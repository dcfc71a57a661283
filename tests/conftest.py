"""Shared test helpers: a station directory with a real configuration and simulated cameras."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.config import Config


def write_station_config(base: Path, extra: str = "", *, station_id: str = "ST-0001") -> Path:
    """A minimal station configuration (the one from the docs) plus ``extra`` TOML."""
    (base / "sim").mkdir(exist_ok=True)
    path = base / "station.toml"
    path.write_text(textwrap.dedent(f"""\
        [station]
        id = "{station_id}"
        data_dir = "{base / 'data'}"

        [devices.simulated]
        root = "{base / 'sim'}"
        """) + textwrap.dedent(extra), encoding="utf-8")
    return path


@pytest.fixture
def station_config(tmp_path: Path) -> Callable[..., Config]:
    """Factory: ``station_config(extra_toml)`` writes station.toml under tmp_path and loads it."""

    def make(extra: str = "") -> Config:
        return config_mod.load(write_station_config(tmp_path, extra))

    return make


@pytest.fixture(autouse=True)
def _root_log_level() -> Iterator[None]:
    """Tests that call ``bwc-agent run`` in-process set the root log level (as the daemon
    does, from station.log_level); later tests must not inherit it."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)
