"""The SQLite store: connection, migrations, transactions, clip rows, custody log rows."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.custody.jcs import canonicalize
from agent.errors import StoreError, StoreFullError
from agent.store.files import prepare_store_file
from agent.store.migrations import MIGRATIONS
from agent.store.states import TRANSITIONS, ClipState
from agent.timeutil import now as time_now

log = logging.getLogger(__name__)

SCHEMA_VERSION = len(MIGRATIONS)
EVENT_TOPIC = "bwc/v1/stations/{station_id}/events"
# Alert codes are the agent's own words; messages may quote outside input: both are cut.
ALERT_CODE_CHARS = 64
ALERT_MESSAGE_CHARS = 500
# Outbox items to be published: not delivered, and not dropped by IT staff.
OUTBOX_PENDING = "delivered_at IS NULL AND dropped_at IS NULL"


@dataclass(frozen=True)
class LogEntry:
    seq: int
    at: str
    kind: str
    clip_id: str | None
    body: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "kind": self.kind, "clip_id": self.clip_id,
                "body": self.body}

    def leaf_input(self) -> bytes:
        """The bytes hashed into the Merkle leaf: JCS of the entry (RFC 8785)."""
        return canonicalize(self.as_dict())


def store_error(exc: sqlite3.Error, message: str) -> StoreError:
    """The StoreError for ``exc``: StoreFullError when the database's disk is full."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StoreFullError(message)
    return StoreError(message)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


class Tx:
    """One open transaction.  Everything done through it commits or rolls back together."""

    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.appended: list[LogEntry] = []

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise store_error(exc, f"database {self.store.path}: {exc}") from exc

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.execute(sql, params).fetchone()
        return row

    # --- custody log -------------------------------------------------------------------

    def log(self, kind: str, clip_id: str | None, body: dict[str, Any]) -> LogEntry:
        """Append a custody log entry; its Merkle leaf hash is fixed now and never changes."""
        row = self.one("SELECT COALESCE(MAX(seq), 0) AS n FROM custody_log")
        seq = int(row["n"]) + 1 if row else 1
        entry = LogEntry(seq=seq, at=time_now(), kind=kind, clip_id=clip_id, body=body)
        leaf = leaf_hash(entry.leaf_input())
        self.execute(
            "INSERT INTO custody_log (seq, at, kind, clip_id, body, leaf) VALUES (?,?,?,?,?,?)",
            (seq, entry.at, kind, clip_id, json.dumps(body, ensure_ascii=False, sort_keys=True),
             leaf),
        )
        self.appended.append(entry)
        return entry

    # --- platform events ---------------------------------------------------------------

    def event(self, type_: str, data: dict[str, Any]) -> str:
        """Queue a platform event in the durable outbox.

        Always, even on a station with no platform yet: once one is configured the
        backlog is sent in order, and the platform can check every clip's manifest.
        """
        row = self.one("SELECT value FROM meta WHERE key = 'event_seq'")
        seq = int(row["value"]) + 1 if row else 1
        self.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('event_seq', ?)",
                     (str(seq),))
        event_id = str(uuid.uuid4())
        at = time_now()
        envelope = {"id": event_id, "type": type_, "station_id": self.store.station_id,
                    "seq": seq, "at": at, "data": data}
        payload = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        self.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, created_at) VALUES (?,?,?,?,?)",
            (EVENT_TOPIC.format(station_id=self.store.station_id), payload, 1, 0, time_now()),
        )
        if type_ == "alert":
            self._count_alert(data, at)
        self.store.outbox_signal.set()
        return event_id

    def _count_alert(self, data: dict[str, Any], at: str) -> None:
        """Keep the ``alerts`` table (by code) up to date: every alert goes through here."""
        code = str(data.get("code") or "unknown")[:ALERT_CODE_CHARS]
        message = str(data.get("message") or "")[:ALERT_MESSAGE_CHARS]
        serial, clip_id = data.get("serial"), data.get("clip_id")
        self.execute(
            "INSERT INTO alerts (code, count, first_at, last_at, message, serial, clip_id) "
            "VALUES (?, 1, ?, ?, ?, ?, ?) ON CONFLICT (code) DO UPDATE SET count = count + 1, "
            "last_at = excluded.last_at, message = excluded.message, serial = excluded.serial, "
            "clip_id = excluded.clip_id",
            (code, at, at, message, serial if isinstance(serial, str) else None,
             clip_id if isinstance(clip_id, str) else None))

    # --- clips -------------------------------------------------------------------------

    def clip(self, clip_id: str) -> sqlite3.Row:
        row = self.one("SELECT * FROM clips WHERE clip_id = ?", (clip_id,))
        if row is None:
            raise StoreError(f"no clip with id {clip_id}")
        return row

    def transition(self, clip_id: str, to: ClipState, *, log_body: dict[str, Any] | None = None,
                   **fields: Any) -> LogEntry:
        """Move a clip to ``to`` (checked against the state machine) and log it, atomically."""
        row = self.clip(clip_id)
        current = ClipState(row["state"])
        if to not in TRANSITIONS[current]:
            raise StoreError(f"clip {clip_id}: refusing transition {current} -> {to}")
        fields["state"] = to.value
        fields["updated_at"] = time_now()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.execute(f"UPDATE clips SET {assignments} WHERE clip_id = ?",
                     (*fields.values(), clip_id))
        body = {"from": current.value, "to": to.value}
        body.update(log_body or {})
        return self.log(f"clip.{to.value}", clip_id, body)

    def update_clip(self, clip_id: str, **fields: Any) -> None:
        """Change bookkeeping fields that are not a state change (offsets, attempts)."""
        fields["updated_at"] = time_now()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.execute(f"UPDATE clips SET {assignments} WHERE clip_id = ?",
                     (*fields.values(), clip_id))


class Store:
    """The station's database.  Thread-safe; one connection, one lock."""

    def __init__(self, path: str | os.PathLike[str], *, station_id: str,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.station_id = station_id
        self.outbox_signal = threading.Event()
        self._lock = threading.RLock()
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False,
                                             isolation_level=None, timeout=30)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                prepare_store_file(self.path)  # 0600, and so its -wal and -shm
                self._conn = sqlite3.connect(self.path, check_same_thread=False,
                                             isolation_level=None, timeout=30)
            self._conn.row_factory = sqlite3.Row
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a commit is on disk when it returns (power cut at the dock).
                self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                self._migrate()
            else:
                self._check_version()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the station database {self.path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open the station database {self.path}: "
                             f"{exc.strerror}") from exc

    def _check_version(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, this agent reads "
                             f"{SCHEMA_VERSION}; start the daemon once to migrate it")

    def _migrate(self) -> None:
        """Bring the schema up to date, and record which bwc-agent version opened the store.

        A migration of an existing store is logged step by step (INFO), summed
        up as a WARNING (an older bwc-agent cannot open the store any more), and
        its last step appends a ``store.migrated`` custody log entry naming the
        schema and agent versions, in the same transaction.
        """
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} is newer than this agent "
                             f"({SCHEMA_VERSION}); refusing to touch it")
        previous = self._stored_agent_version() if version > 0 else None
        for index in range(version, SCHEMA_VERSION):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[index].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {index + 1}")
                if index + 1 == SCHEMA_VERSION:
                    if version > 0:
                        Tx(self, self._conn).log("store.migrated", None, {
                            "from_schema": version, "to_schema": SCHEMA_VERSION,
                            "from_version": previous, "to_version": __version__})
                    self._stamp_agent_version()
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if version > 0:
                log.info("station database %s: schema version %d -> %d", self.path, index,
                         index + 1)
        if 0 < version < SCHEMA_VERSION:
            log.warning("migrated the station database %s from schema version %d to %d "
                        "(bwc-agent %s, last opened by bwc-agent %s); older versions cannot "
                        "open it any more: roll back with the backup made before the upgrade",
                        self.path, version, SCHEMA_VERSION, __version__, previous or "unknown")
        elif version == SCHEMA_VERSION and previous != __version__:
            with self.transaction():
                self._stamp_agent_version()
            if previous is not None:
                log.info("station database %s: last opened by bwc-agent %s, now %s",
                         self.path, previous, __version__)

    def _stored_agent_version(self) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'agent_version'").fetchone()
        return str(row[0]) if row is not None else None

    def _stamp_agent_version(self) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('agent_version', ?)",
                           (__version__,))

    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def agent_version(self) -> str | None:
        """The bwc-agent version that last opened the store for writing (None: before 0.2)."""
        with self._lock:
            try:
                return self._stored_agent_version()
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT; rolls back on any exception."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise store_error(exc, f"database {self.path}: cannot begin: {exc}") from exc
            tx = Tx(self, self._conn)
            try:
                yield tx
            except BaseException:
                self._rollback()
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise store_error(exc, f"database {self.path}: commit failed: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (SQLITE_FULL, I/O errors):
        # a failing ROLLBACK must not hide the error that caused it.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise store_error(exc, f"database {self.path}: {exc}") from exc

    def query_one(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def clip(self, clip_id: str) -> sqlite3.Row:
        row = self.query_one("SELECT * FROM clips WHERE clip_id = ?", (clip_id,))
        if row is None:
            raise StoreError(f"no clip with id {clip_id}")
        return row

    def find_clip(self, prefix: str) -> sqlite3.Row:
        """A clip by its id or a unique prefix of it (people type short ids)."""
        rows = self.query("SELECT * FROM clips WHERE clip_id LIKE ? ORDER BY clip_id LIMIT 2",
                          (prefix.replace("%", "").replace("_", "\\_") + "%",))
        rows = [r for r in rows if r["clip_id"].startswith(prefix)]
        if not rows:
            raise StoreError(f"no clip with id {prefix!r}")
        if len(rows) > 1:
            raise StoreError(f"clip id prefix {prefix!r} is ambiguous; give more characters")
        return rows[0]

    def clips(self, state: str | None = None) -> list[sqlite3.Row]:
        if state:
            return self.query("SELECT * FROM clips WHERE state = ? ORDER BY clip_id", (state,))
        return self.query("SELECT * FROM clips ORDER BY clip_id")

    def counts_by_state(self) -> dict[str, int]:
        rows = self.query("SELECT state, COUNT(*) AS n FROM clips GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    def device_summaries(self) -> list[dict[str, Any]]:
        """Every device seen, as the status report (CLI and MQTT) shows it.

        Battery, charging and resolution are the latest reading (``health_at``
        says when it was taken; None where the device never reported one).
        """
        summaries = []
        for r in self.query("SELECT * FROM devices ORDER BY serial"):
            health = json.loads(r["health"]) if r["health"] else {}
            summaries.append({
                "serial": r["serial"], "model": r["model"], "officer_id": r["officer_id"],
                "docked": r["docked_handle"] is not None, "last_seen": r["last_seen"],
                "clock_offset_s": r["clock_offset_s"],
                "battery_percent": health.get("battery_percent"),
                "charging": health.get("charging"), "resolution": health.get("resolution"),
                "health_at": health.get("at")})
        return summaries

    def outbox_backlog(self) -> int:
        """Events not yet acknowledged by the broker."""
        row = self.query_one(f"SELECT COUNT(*) AS n FROM outbox WHERE {OUTBOX_PENDING}")
        return int(row["n"]) if row else 0

    def log_size(self) -> int:
        row = self.query_one("SELECT COALESCE(MAX(seq), 0) AS n FROM custody_log")
        return int(row["n"]) if row else 0

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        sql = "SELECT leaf FROM custody_log ORDER BY seq"
        params: tuple[Any, ...] = ()
        if size is not None:
            sql = "SELECT leaf FROM custody_log WHERE seq <= ? ORDER BY seq"
            params = (size,)
        return [bytes(r["leaf"]) for r in self.query(sql, params)]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
