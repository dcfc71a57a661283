"""Build script.  The metadata is in setup.cfg; this file adds what setup.cfg cannot say.

* The files bwc-agent reads at run time (device catalog, example
  configuration, systemd and udev files) live in config/ and install as the
  package ``bwc_agent_data``, found with importlib.resources.
* Every build has its own version, from git (setuptools-scm): a tagged commit
  is the tag's version; any other commit is the next release's development
  version ``X.Y.Z.devN+g<commit>`` (N = commits since the tag, or since the
  first commit while nothing is tagged, when the next release is 0.2.0, the
  first after the 0.1.0 that was never tagged).  An sdist carries its version
  in PKG-INFO, so building from it needs no git.
"""

from __future__ import annotations

from typing import Any

from setuptools import find_packages, setup

FIRST_RELEASE = "0.2.0"


def version_scheme(version: Any) -> str:
    """The release version, or the next release's development version (PEP 440)."""
    from setuptools_scm.version import guess_next_dev_version

    if str(version.tag) == "0.0":  # setuptools-scm's stand-in when no tag exists
        return f"{FIRST_RELEASE}.dev{version.distance}"
    result: str = guess_next_dev_version(version)
    return result


setup(
    packages=[*find_packages(include=["agent", "agent.*", "drivers", "drivers.*"]),
              "bwc_agent_data"],
    package_dir={"bwc_agent_data": "config"},
    use_scm_version={"version_scheme": version_scheme, "local_scheme": "node-and-date"},
)
