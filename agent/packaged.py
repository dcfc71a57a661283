"""The files shipped inside the package: device catalog, example configuration, systemd unit.

They live in the source tree's config/ and install as the package
``bwc_agent_data`` (setup.py), so they are found with importlib.resources
wherever the agent is installed, never relative to the working directory.
Only file names listed by :func:`names` can be asked for: a name is never
a path.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from agent.errors import ConfigError

PACKAGE = "bwc_agent_data"
CATALOG = "devices.toml"
EXAMPLE_CONFIG = "station.example.toml"
UNIT = "bwc-agent.service"


def _root() -> Traversable:
    try:
        return resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"the package data of bwc-agent ({PACKAGE}) is not installed; "
                          "reinstall bwc-agent") from exc


def names() -> list[str]:
    """The shipped files (not the package's own Python module), sorted."""
    return sorted(item.name for item in _root().iterdir()
                  if item.is_file() and not item.name.endswith((".py", ".pyc")))


def _entry(name: str) -> Traversable:
    known = names()
    if name not in known:
        raise ConfigError(f"{name!r} is not a file shipped with bwc-agent "
                          f"(shipped: {', '.join(known) or 'none'})")
    return _root() / name


def path(name: str) -> Path:
    """The file system path of the shipped file ``name``.

    pip installs packages as directories, so the data is always a real
    file; an installation that is not (a zip) is refused with a message
    rather than extracted to a temporary copy that would vanish.
    """
    entry = _entry(name)
    if not isinstance(entry, Path):
        raise ConfigError(f"bwc-agent's {name} is inside an archive ({entry}); install "
                          "bwc-agent with pip into a virtualenv")
    return entry


def read_bytes(name: str) -> bytes:
    """The contents of the shipped file ``name``."""
    return _entry(name).read_bytes()
