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


def test_config_show_lists_and_prints_the_shipped_files(capfd: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    assert main(["config", "show"]) == 0
    listed = capfd.readouterr().out.split()
    assert listed == packaged.names()
    assert main(["config", "show", packaged.EXAMPLE_CONFIG]) == 0
    assert capfd.readouterr().out == packaged.read_bytes(packaged.EXAMPLE_CONFIG).decode()
    assert main(["config", "show", "--path", packaged.UNIT]) == 0
    assert capfd.readouterr().out.strip() == str(packaged.path(packaged.UNIT))
    assert main(["config", "show", "../setup.py"]) == 2
    assert "is not a file shipped with bwc-agent" in capfd.readouterr().err
