"""Which bwc-agent wrote the store: a migration says so in the log and in the custody log."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from agent import __version__
from agent.store import Store
from agent.store.migrations import MIGRATIONS


def _store_at_schema(path: Path, version: int, agent_version: str | None) -> None:
    """A database as an older bwc-agent left it: the first ``version`` migrations applied."""
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:version]:
        conn.executescript(migration)
    conn.execute(f"PRAGMA user_version = {version}")
    if agent_version is not None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('agent_version', ?)",
                     (agent_version,))
    conn.close()


def _entries(store: Store, kind: str) -> list[dict[str, object]]:
    return [json.loads(r["body"]) for r in
            store.query("SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]


def test_a_migration_is_logged_with_schema_and_agent_versions(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if len(MIGRATIONS) < 2:
        pytest.skip("one schema version only: nothing to migrate from")
    db = tmp_path / "state.db"
    _store_at_schema(db, 1, "0.1.0")
    with caplog.at_level(logging.INFO, logger="agent.store.db"):
        store = Store(db, station_id="ST-1")
    latest = len(MIGRATIONS)
    assert _entries(store, "store.migrated") == [{
        "from_schema": 1, "to_schema": latest,
        "from_version": "0.1.0", "to_version": __version__}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"from schema version 1 to {latest}" in m and "0.1.0" in m and __version__ in m
               for m in warnings), warnings
    steps = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("schema version" in m for m in steps) == latest - 1, steps
    assert store.query_one("SELECT value FROM meta WHERE key = 'agent_version'")["value"] \
        == __version__
    store.close()

    caplog.clear()
    store = Store(db, station_id="ST-1")  # opened again: nothing more to say
    assert len(_entries(store, "store.migrated")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_a_store_from_before_versions_were_recorded_says_unknown(tmp_path: Path) -> None:
    if len(MIGRATIONS) < 2:
        pytest.skip("one schema version only: nothing to migrate from")
    db = tmp_path / "state.db"
    _store_at_schema(db, 1, None)
    store = Store(db, station_id="ST-1")
    [entry] = _entries(store, "store.migrated")
    assert entry["from_version"] is None and entry["to_version"] == __version__


def test_a_new_store_records_its_agent_version_without_a_migration_entry(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-1")
    assert _entries(store, "store.migrated") == []
    assert store.agent_version() == __version__


def test_another_agent_version_on_the_same_schema_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "state.db"
    _store_at_schema(db, len(MIGRATIONS), "0.1.0")
    with caplog.at_level(logging.INFO, logger="agent.store.db"):
        store = Store(db, station_id="ST-1")
    assert _entries(store, "store.migrated") == []
    assert any(f"last opened by bwc-agent 0.1.0, now {__version__}" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)
    assert store.agent_version() == __version__


def test_a_read_only_store_is_not_stamped(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _store_at_schema(db, len(MIGRATIONS), "0.1.0")
    store = Store(db, station_id="ST-1", readonly=True)
    assert store.agent_version() == "0.1.0"
