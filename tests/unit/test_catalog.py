"""The device catalog: loading, validation messages, USB matching and file-name parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.errors import ConfigError
from drivers import catalog

REPO_CATALOG = Path(__file__).resolve().parents[2] / "config" / "devices.toml"

GOOD = {
    "key": "cam-x",
    "vendor": "Acme",
    "model": "X1",
    "usb_ids": ["ABCD:0001"],
    "name_pattern": r"(?P<serial>[A-Z0-9]{7})_(?P<officer>\d{6})_(?P<start>\d{14})"
                    r"_(?P<seq>\d{4})(?P<important>_IMP)?\.(?i:mp4)",
    "clock_utc_offset": "+08:00",
    "extensions": ["MP4"],
}


def test_repository_catalog_loads_with_simulated_and_gat947_entries() -> None:
    cat = catalog.load(REPO_CATALOG)
    keys = [e.key for e in cat.entries]
    assert keys[0] == "simulated"
    assert sum(k.startswith("gat947-") for k in keys) >= 2
    assert cat.get("simulated").extensions == {"mp4", "avi"}


def test_match_usb_ignores_case_and_misses_cleanly() -> None:
    cat = catalog.parse({"device": [GOOD]})
    entry = cat.match_usb("abcd:0001")
    assert entry is not None and entry.model == "X1"
    assert entry.usb_ids == ("abcd:0001",)
    assert cat.match_usb("ABCD:0002") is None


def test_parse_name_converts_local_camera_time_to_utc() -> None:
    entry = catalog.parse({"device": [GOOD]}).get("cam-x")
    info = catalog.parse_name(entry, "DCIM/20240105/A123456_010203_20240105083015_0007_IMP.MP4")
    assert info == catalog.NameInfo("2024-01-05T00:30:15.000Z", True, "010203")
    # Just after local midnight is the previous day in UTC.
    info = catalog.parse_name(entry, "A123456_010203_20240105003000_0008.mp4")
    assert info == ("2024-01-04T16:30:00.000Z", False, "010203")


def test_parse_name_with_negative_offset_and_non_matching_names() -> None:
    entry = catalog.parse({"device": [dict(GOOD, clock_utc_offset="-05:30")]}).get("cam-x")
    assert catalog.parse_name(entry, "A123456_010203_20240105083015_0007.MP4").recorded_start \
        == "2024-01-05T14:00:15.000Z"
    assert catalog.parse_name(entry, "IMG_0001.JPG") == (None, False, None)
    # An impossible date gives no start, but the name still says important and officer.
    assert catalog.parse_name(entry, "A123456_010203_20241399083015_0007_IMP.MP4") \
        == (None, True, "010203")


def test_repository_variant_with_short_important_marker() -> None:
    entry = catalog.load(REPO_CATALOG).get("gat947-generic-b")
    assert catalog.parse_name(entry, "ZFY0001_123456_20230615120000_0001_I.MP4").important
    assert not catalog.parse_name(entry, "ZFY0001_123456_20230615120000_0002.MP4").important


def test_format_name_round_trips_and_refuses_what_the_pattern_would_not_match() -> None:
    entry = catalog.load(REPO_CATALOG).get("simulated")
    start = datetime(2024, 3, 1, 1, 2, 3, tzinfo=UTC)
    name = catalog.format_name(entry, serial="SIM0001", officer="000042", start=start, seq=12,
                               important=True, ext="avi")
    assert name == "SIM0001_000042_20240301090203_0012_IMP.AVI"
    assert catalog.parse_name(entry, name) == ("2024-03-01T01:02:03.000Z", True, "000042")
    with pytest.raises(ValueError, match="does not match catalog entry 'simulated'"):
        catalog.format_name(entry, serial="TOO-LONG-SERIAL", officer="000042", start=start,
                            seq=1, important=False, ext="mp4")


@pytest.mark.parametrize(("change", "expected"), [
    ({"usb_ids": ["12:34"]}, "device[1](cam-x).usb_ids[0]: '12:34' is not 'VID:PID'"),
    ({"name_pattern": "(unclosed"}, "device[1](cam-x).name_pattern: not a valid regular"),
    ({"name_pattern": "(?P<when>.*)"}, "device[1](cam-x).name_pattern: unknown group(s) when"),
    ({"clock_utc_offset": "UTC+8"}, "device[1](cam-x).clock_utc_offset: 'UTC+8' is not"),
    ({"extensions": [".mp4"]}, "device[1](cam-x).extensions[0]: '.mp4' is not an extension"),
    ({"extensions": []}, "device[1](cam-x).extensions: must list at least one"),
    ({"colour": "red"}, "device[1](cam-x).colour: unknown key"),
    ({"key": "Bad Key"}, "device[1](Bad Key).key: 'Bad Key' does not match"),
])
def test_validation_names_entry_and_key(change: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        catalog.parse({"device": [dict(GOOD, **change)]}, Path("devices.toml"))
    assert any(p.startswith(expected) for p in exc_info.value.problems), \
        exc_info.value.problems
    assert "devices.toml" in str(exc_info.value)


def test_validation_reports_every_problem_missing_keys_and_duplicates() -> None:
    missing = {k: v for k, v in GOOD.items() if k != "name_pattern"}
    with pytest.raises(ConfigError) as exc_info:
        catalog.parse({"device": [GOOD, missing, GOOD], "extra": 1})
    problems = exc_info.value.problems
    assert "extra: unknown key (the catalog holds [[device]] entries only)" in problems
    assert "device[2](cam-x).name_pattern: required key is missing" in problems
    assert any(p.startswith("device[3](cam-x).key: 'cam-x' already used by device[1]")
               for p in problems)
    assert any(p.startswith("device[3](cam-x).usb_ids: abcd:0001 already listed")
               for p in problems)


def test_unknown_entry_and_unreadable_or_broken_files(tmp_path: Path) -> None:
    cat = catalog.parse({"device": [GOOD]}, tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"no entry 'simulated' .known: cam-x."):
        cat.get("simulated")
    with pytest.raises(ConfigError, match=r"cannot read device catalog .*missing.toml"):
        catalog.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[device]\n")
    with pytest.raises(ConfigError, match=r"broken.toml: TOML syntax error"):
        catalog.load(broken)
