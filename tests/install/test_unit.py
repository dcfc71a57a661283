"""The shipped systemd unit parses (systemd-analyze verify) and names what the install makes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.install.conftest import sh

pytestmark = pytest.mark.install

PREFIX = "/opt/bwc-agent/current"  # where docs/OPERATIONS.md installs the current version


def _unit(installed: Path, tmp_path: Path) -> tuple[str, Path]:
    """The unit as the installed package ships it, and a copy pointing into ``installed``."""
    text = sh(installed / "bin" / "bwc-agent", "config", "show", "bwc-agent.service",
              cwd=tmp_path).stdout
    local = tmp_path / "bwc-agent.service"
    local.write_text(text.replace(PREFIX, str(installed)), encoding="utf-8")
    return text, local


def _section(text: str, name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(text)
    return parser[name]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_shipped_unit_verifies(installed: Path, tmp_path: Path) -> None:
    _text, local = _unit(installed, tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "systemd-analyze has remarks on the unit"


def test_the_unit_runs_the_installed_agent_and_never_restarts_on_exit_2(
        installed: Path, tmp_path: Path) -> None:
    text, local = _unit(installed, tmp_path)
    service = _section(text, "Service")
    assert service["ExecStart"] == (f"{PREFIX}/bin/bwc-agent run --config "
                                    "/etc/bwc-agent/station.toml")
    # run makes the config check's checks itself; an ExecStartPre failing with 2 would be
    # restarted regardless of RestartPreventExitStatus (it only looks at the main process).
    assert "ExecStartPre" not in service
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    for path in service["ReadWritePaths"].split():
        assert path.startswith("-") or path == "/var/lib/bwc-agent", \
            f"{path}: a directory a station may lack must be optional ('-')"
    local_text = local.read_text(encoding="utf-8")
    local_service = _section(local_text, "Service")
    assert Path(local_service["ExecStart"].split()[0]).is_file()
    docs = [d.removeprefix("file://") for d in
            _section(local_text, "Unit")["Documentation"].split()]
    assert docs and all(Path(d).is_file() for d in docs), docs

