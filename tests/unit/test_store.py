"""The store: migrations, the state machine, and state change + custody log in one transaction."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from agent.custody.jcs import canonicalize
from agent.errors import StoreError
from agent.store import ClipState, Store
from agent.store.db import SCHEMA_VERSION


def _insert_clip(store: Store, clip_id: str = "c1") -> None:
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO clips (clip_id, device_serial, path, name, size, mtime_ms, state,"
            " discovered_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (clip_id, "SIM1", f"DCIM/{clip_id}.mp4", f"{clip_id}.mp4", 10, 1000, "discovered",
             "t", "t"))
        tx.log("clip.discovered", clip_id, {"path": "DCIM/a.mp4"})


def test_new_database_is_wal_and_versioned(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-1")
    store.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "state.db", station_id="ST-1").close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this agent"):
        Store(tmp_path / "state.db", station_id="ST-1")


def test_transition_logs_in_the_same_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-1")
    _insert_clip(store)
    with store.transaction() as tx:
        entry = tx.transition("c1", ClipState.COPYING, copy_attempts=1)
    assert store.clip("c1")["state"] == "copying"
    row = store.query_one("SELECT * FROM custody_log WHERE seq = ?", (entry.seq,))
    assert row is not None and row["kind"] == "clip.copying"
    assert json.loads(row["body"]) == {"from": "discovered", "to": "copying"}
    expected = {"seq": entry.seq, "at": row["at"], "kind": "clip.copying", "clip_id": "c1",
                "body": {"from": "discovered", "to": "copying"}}
    assert bytes(row["leaf"]) == hashlib.sha256(b"\x00" + canonicalize(expected)).digest()


def test_failed_transaction_leaves_neither_state_nor_log(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-1")
    _insert_clip(store)
    size = store.log_size()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.transition("c1", ClipState.COPYING)
        raise RuntimeError("power cut")
    assert store.clip("c1")["state"] == "discovered"
    assert store.log_size() == size


def test_illegal_transition_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-1")
    _insert_clip(store)
    with pytest.raises(StoreError, match="refusing transition discovered -> acknowledged"), \
            store.transaction() as tx:
        tx.transition("c1", ClipState.ACKNOWLEDGED)
    assert store.clip("c1")["state"] == "discovered"


def test_events_are_queued_even_before_a_platform_is_configured(tmp_path: Path) -> None:
    synced = Store(tmp_path / "b.db", station_id="ST-1")
    with synced.transaction() as tx:
        first = tx.event("alert", {"x": 1})
        second = tx.event("alert", {"x": 2})
    rows = synced.query("SELECT * FROM outbox ORDER BY id")
    payloads = [json.loads(r["payload"]) for r in rows]
    assert [p["id"] for p in payloads] == [first, second]
    assert [p["seq"] for p in payloads] == [1, 2]
    assert rows[0]["topic"] == "bwc/v1/stations/ST-1/events"
    assert payloads[0]["station_id"] == "ST-1" and payloads[0]["type"] == "alert"


def test_find_clip_by_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", station_id="ST-1")
    _insert_clip(store, "0190aaaa-1")
    _insert_clip(store, "0190aaab-2")
    assert store.find_clip("0190aaaa")["clip_id"] == "0190aaaa-1"
    with pytest.raises(StoreError, match="ambiguous"):
        store.find_clip("0190aa")
    with pytest.raises(StoreError, match="no clip with id"):
        store.find_clip("ffff")
