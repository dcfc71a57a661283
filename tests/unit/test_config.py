"""Configuration: the minimal file is valid, and every problem is reported with its key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.errors import ConfigError
from tests.conftest import write_station_config


def test_minimal_file_is_valid_with_defaults(tmp_path: Path) -> None:
    cfg = config_mod.load(write_station_config(tmp_path))
    assert cfg.station.id == "ST-0001"
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.devices["simulated"].root == tmp_path / "sim"
    assert cfg.ingest.verify is True
    assert cfg.station.max_ingest_workers == 32
    assert cfg.retention.release == "after-ack"
    assert cfg.platform is None


def test_example_file_is_valid_and_documents_every_key() -> None:
    from agent.configschema import describe

    example = Path(__file__).parents[2] / "config" / "station.example.toml"
    text = example.read_text(encoding="utf-8")
    cfg = config_mod.load(example)
    assert cfg.platform is not None
    assert cfg.web is not None
    assert cfg.mount is not None and cfg.device_policy.policy == "catalog"
    for key in ("policy", "allow", "block"):
        assert f"\n{key} =" in text, f"devices.{key} is not documented"
    for section in ("station", "ingest", "media", "custody", "retention", "platform", "web",
                    "mount", "pki", "metrics"):
        cls = type(getattr(cfg, section))
        for key_path, _default, doc in describe(cls, section):
            key = key_path.split(".")[-1]
            assert f"{key} =" in text or f"# {key} =" in text, f"{key_path} is not documented"
            assert doc, f"{key_path} has no doc string"


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = write_station_config(tmp_path, """
        [ingest]
        chunk_kib = 1
        verfy = true
        queue_chunks = "eight"

        [media]
        probe = "yes"

        [retention]
        release = "sometimes"

        [devices.floppy]
        x = 1
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    problems = info.value.problems
    assert "ingest.chunk_kib: 1 is below the minimum 64" in problems
    assert any(p.startswith("ingest.verfy: unknown key") for p in problems)
    assert "ingest.queue_chunks: expected an integer, got 'eight'" in problems
    assert "media.probe: expected a boolean, got 'yes'" in problems
    assert "retention.release: 'sometimes' is not one of 'after-ack', 'never'" in problems
    assert any(p.startswith("devices.floppy: unknown driver") for p in problems)
    assert len(problems) == 6


def test_missing_required_and_bad_station_id(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[station]\nid = "../etc"\n[devices.simulated]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    problems = info.value.problems
    assert "station.data_dir: required key is missing" in problems
    assert "devices.simulated.root: required key is missing" in problems
    assert any(p.startswith("station.id: '../etc' does not match") for p in problems)


def test_platform_refuses_clear_text_without_insecure(tmp_path: Path) -> None:
    path = write_station_config(tmp_path, """
        [platform]
        mqtt_url = "mqtt://127.0.0.1:1883"
        upload_url = "http://127.0.0.1:8080/files/"
        ca_file = "ca.pem"
        platform_key_file = "platform.pub"
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert any(p.startswith("platform.mqtt_url: mqtt:// sends evidence") for p in info.value.problems)
    assert any(p.startswith("platform.upload_url: http:// sends footage") for p in info.value.problems)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[station\nid=1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: TOML syntax error"):
        config_mod.load(path)


def test_config_check_command_lists_all_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_station_config(tmp_path)
    assert main(["config", "check", "--config", str(good)]) == 0
    assert "OK (station ST-0001, drivers: simulated" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(f"""\
        [station]
        id = "ST-1"
        data_dir = "{tmp_path}"
        max_ingest_workers = 99
        colour = "blue"
        [devices.simulated]
        root = "{tmp_path}"
        """), encoding="utf-8")
    assert main(["config", "check", "--config", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "station.max_ingest_workers: 99 is above the maximum 64" in out
    assert "station.colour: unknown key" in out
    assert "(2 problems)" in out


def test_mount_roots_of_two_drivers_must_differ(tmp_path: Path) -> None:
    path = write_station_config(tmp_path, f"""
        [devices.mass_storage]
        mount_root = "{tmp_path / 'media'}"
        [devices.gat947]
        mount_root = "{tmp_path / 'media'}"
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert any(p.startswith("devices.gat947.mount_root: ") and "docked twice" in p
               for p in info.value.problems)


def test_pki_section_is_checked(tmp_path: Path) -> None:
    path = write_station_config(tmp_path, """
        [pki]
        est_url = "http://ca.example:8080"
        renew_after = 1.5
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert info.value.problems == ["pki.renew_after: 1.5 is above the maximum 0.95"]
    path = write_station_config(tmp_path, '[pki]\nest_url = "http://ca.example:8080"\n')
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert info.value.problems == [
        "pki.est_url: 'http://ca.example:8080' is not an https:// URL (EST runs over TLS only)",
        "pki.est_ca_file: needed to verify the EST server when there is no [platform] table "
        "(whose ca_file would be used)"]
    path = write_station_config(tmp_path, """
        [pki]
        est_url = "https://ca.example:8444"
        est_ca_file = "ca.pem"
        """)
    cfg = config_mod.load(path)
    assert cfg.pki.est_ca_file == tmp_path / "ca.pem"
    assert (cfg.pki.renew_after, cfg.pki.est_auth) == (0.66, "basic")
