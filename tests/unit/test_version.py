"""Every build has its own version, and the command line shows it."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest

from agent import __version__
from agent.cli.main import main
from agent.store.migrations import MIGRATIONS
from tests.conftest import write_station_config

# PEP 440 as setup.py makes it: a release, or the next release's .devN with the commit.
BUILD_VERSION = re.compile(r"\d+\.\d+\.\d+(\.dev\d+)?(\+g[0-9a-f]{7,}(\.d\d{8})?)?")


def test_the_version_is_the_installed_builds() -> None:
    assert __version__ == metadata.version("bwc-agent")
    assert BUILD_VERSION.fullmatch(__version__), __version__


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bwc-agent {__version__}"


def test_status_shows_the_agent_and_store_versions(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_station_config(tmp_path)
    assert main(["run", "--once", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["version"] == __version__
    assert status["store"] == {"schema": len(MIGRATIONS), "agent_version": __version__}
    assert main(["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert (f"bwc-agent {__version__}; store schema {len(MIGRATIONS)}, last written by "
            f"bwc-agent {__version__}") in text
