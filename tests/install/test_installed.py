"""The installed wheel and sdist: their own files, the demo's whole flow, from elsewhere."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from drivers.simcam import make_camera
from tests.install.conftest import REPO, clean_env, make_venv, sh

pytestmark = pytest.mark.install


def _station(base: Path, extra: str = "") -> Path:
    (base / "sim").mkdir(exist_ok=True)
    config = base / "station.toml"
    config.write_text(textwrap.dedent(f"""\
        [station]
        id = "ST-0009"
        data_dir = "{base / 'data'}"

        [devices.simulated]
        root = "{base / 'sim'}"
        """) + textwrap.dedent(extra), encoding="utf-8")
    return config


def test_the_installed_agent_finds_its_files_inside_the_virtualenv(
        installed: Path, version: str, tmp_path: Path) -> None:
    bwc = installed / "bin" / "bwc-agent"
    assert sh(bwc, "--version", cwd=tmp_path).stdout.strip() == f"bwc-agent {version}"
    where = sh(installed / "bin" / "python", "-c",
               "import agent, drivers.catalog as c; print(agent.__file__); print(c.load().source)",
               cwd=tmp_path).stdout.split()
    site = installed / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where
    assert Path(where[1]).name == "devices.toml"
    shipped = sh(bwc, "config", "show", cwd=tmp_path).stdout.split()
    assert {"devices.toml", "station.example.toml", "bwc-agent.service"} <= set(shipped)
    assert "mosquitto.conf" not in shipped, "the development broker's file is not shipped"
    assert (sh(bwc, "config", "show", "devices.toml", cwd=tmp_path).stdout
            == (REPO / "config" / "devices.toml").read_text(encoding="utf-8"))
    docs = installed / "share" / "doc" / "bwc-agent"
    assert (docs / "OPERATIONS.md").read_bytes() == (REPO / "docs" / "OPERATIONS.md").read_bytes()


def test_the_installed_agent_uses_the_shipped_catalog(installed: Path, tmp_path: Path) -> None:
    """A mass-storage station without a catalog key runs: the catalog ships in the package."""
    (tmp_path / "media").mkdir()
    config = _station(tmp_path, f"""
        [devices.mass_storage]
        mount_root = "{tmp_path / 'media'}"
        """)
    bwc = installed / "bin" / "bwc-agent"
    checked = sh(bwc, "config", "check", "--config", config, cwd=tmp_path)
    assert "OK (station ST-0009, drivers: mass_storage, simulated" in checked.stdout
    sh(bwc, "run", "--once", "--config", config, cwd=tmp_path)
    assert (tmp_path / "data" / "keys" / "station.key").exists()


def test_the_demo_runs_with_the_installed_agent(installed: Path, version: str,
                                                tmp_path: Path) -> None:
    """dock, offload, seal, sync, ack, release, export, verify: scripts/demo's flow."""
    work = tmp_path / "demo"
    result = sh(sys.executable, REPO / "scripts" / "demo_main.py", "--clips", "4",
                "--agent", installed / "bin" / "bwc-agent", "--workdir", work, cwd=tmp_path,
                env=clean_env())
    out = result.stdout
    assert f"bwc-agent {version}\n" in out, "the installed agent ran"
    total = 4 + 1  # two officers' cameras: 4 clips and 1
    assert out.count("  accepted  ack sent: yes") == total, out  # sealed, synced, acknowledged
    assert "0 recordings left on ZFY0042" in out and "0 recordings left on ZFY0043" in out
    assert "yes  cameras emptied after the platform's acks" in out  # released
    assert "VERIFIED" in out and "yes  bundle verified" in out  # exported and verified
    assert out.rstrip().endswith("demo: OK")


def test_the_sdist_installs_and_runs(wheelhouse: Path, version: str, tmp_path: Path) -> None:
    """pip builds the sdist without git: the version comes from its PKG-INFO."""
    venv = make_venv(tmp_path / "venv")
    [sdist] = wheelhouse.glob("bwc_agent-*.tar.gz")
    # The build backend comes from the index, at the versions of the constraints (which pip
    # applies to build environments through PIP_CONSTRAINT); the rest from the wheelhouse.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_CONSTRAINT"] = str(wheelhouse / "constraints.txt")
    sh(venv / "bin" / "pip", "install", "--quiet", "--find-links", wheelhouse, sdist,
       cwd=tmp_path, env=env)
    bwc = venv / "bin" / "bwc-agent"
    assert sh(bwc, "--version", cwd=tmp_path).stdout.strip() == f"bwc-agent {version}"
    config = _station(tmp_path)
    make_camera(tmp_path / "sim", serial="SDIST01", clips=2, seconds=0.5, width=160,
                height=120, fps=10.0)
    ran = sh(bwc, "run", "--once", "--config", config, cwd=tmp_path)
    assert "SDIST01: 2 recordings, 2 copied" in ran.stdout

