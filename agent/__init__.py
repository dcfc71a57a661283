"""bwc-agent: the edge agent for body-worn camera docking stations."""

from importlib import metadata


def _installed_version() -> str:
    """The version of the installed distribution (setup.py says how a build gets it)."""
    try:
        return metadata.version("bwc-agent")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
        return "0+unknown"


__version__ = _installed_version()
