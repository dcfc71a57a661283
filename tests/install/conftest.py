"""The package as IT staff install it: a wheelhouse built from this tree, fresh virtualenvs.

Everything happens outside the source tree (pytest's temporary directories)
and every installed command runs with a working directory there, with no
PYTHONPATH and no pip configuration of this machine: what works here works
on a station that only has the wheelhouse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a station: no PYTHONPATH, no pip settings of this machine."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.update(extra)
    return env


def sh(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it fails."""
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env or clean_env(), text=True,
                            capture_output=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {result.returncode}\n"
                    f"{result.stdout}\n{result.stderr}")
    return result


def make_venv(path: Path) -> Path:
    sh(sys.executable, "-m", "venv", path, cwd=path.parent)
    return path


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/wheelhouse: this tree's wheel and sdist, dependency wheels, constraints."""
    out = tmp_path_factory.mktemp("wheelhouse")
    # The build and the download may use this machine's pip settings (its index).
    sh(REPO / "scripts" / "wheelhouse", out, cwd=out, env=dict(os.environ))
    return out


@pytest.fixture(scope="session")
def version(wheelhouse: Path) -> str:
    return (wheelhouse / "VERSION").read_text(encoding="ascii").strip()


@pytest.fixture(scope="session")
def installed(wheelhouse: Path, version: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with bwc-agent installed offline from the wheelhouse."""
    venv = make_venv(tmp_path_factory.mktemp("station") / "venv")
    sh(venv / "bin" / "pip", "install", "--quiet", "--no-index", "--find-links", wheelhouse,
       "-c", wheelhouse / "constraints.txt", f"bwc-agent=={version}", cwd=venv)
    return venv
