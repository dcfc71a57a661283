"""The files shipped inside the package are found by name, never by a path from outside."""

from __future__ import annotations

import pytest

from agent import packaged
from agent.errors import ConfigError
from drivers import catalog as catalog_mod


def test_the_runtime_files_are_shipped() -> None:
    names = packaged.names()
    for name in (packaged.CATALOG, packaged.EXAMPLE_CONFIG, packaged.UNIT):
        assert name in names
        assert packaged.path(name).is_file()
        assert packaged.read_bytes(name) == packaged.path(name).read_bytes()
    assert "__init__.py" not in names


@pytest.mark.parametrize("name", ["../setup.py", "/etc/passwd", "__init__.py", "nope.toml", ""])
def test_a_name_that_is_not_shipped_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not a file shipped with bwc-agent"):
        packaged.read_bytes(name)


def test_the_default_catalog_is_the_shipped_one() -> None:
    catalog = catalog_mod.load()
    assert catalog.source == packaged.path(packaged.CATALOG)
    assert catalog.get("simulated").key == "simulated"
