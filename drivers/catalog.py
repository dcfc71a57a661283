"""The device catalog (devices.toml): which camera is which, and how it names files.

Each ``[[device]]`` entry gives a camera model's USB ids, the regular
expression its recording names match, the UTC offset of the clock those
names are written in, and the file extensions that are recordings.  The
name pattern may use these named groups:

* ``serial``    the camera's serial number
* ``officer``   the officer number the camera is assigned to
* ``start``     recording start, ``YYYYMMDDhhmmss`` in the camera's local time
* ``seq``       the file sequence number
* ``important`` non-empty when the officer marked the clip important

Patterns are matched against the file name (not the directory) with
``re.fullmatch``.  Loading reports every problem, each naming the entry and
key (``device[2](zfy-a).usb_ids[0]: ...``).
"""

# option() returns a dataclasses.field; ruff's RUF009 cannot tell it from a call.

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from agent import packaged
from agent.configschema import load_section, option
from agent.errors import ConfigError
from agent.timeutil import rfc3339

GROUPS = frozenset({"serial", "officer", "start", "seq", "important"})
_KEY = r"[a-z0-9][a-z0-9_-]{0,63}"
_USB_ID = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
_OFFSET = re.compile(r"([+-])(\d\d):(\d\d)")


@dataclass(frozen=True)
class _RawEntry:
    key: str = option(doc="Catalog key, referred to by drivers.", pattern=_KEY)
    vendor: str = option(doc="Manufacturer name.")
    model: str = option(doc="Model name.")
    name_pattern: str = option(doc="Regex for recording file names (named groups).")
    extensions: list[str] = option(doc="Recording file extensions, without the dot.")
    usb_ids: list[str] = option(default_factory=list, doc="USB 'VID:PID' pairs.")
    clock_utc_offset: str = option("+08:00", doc="UTC offset of the camera clock, '+HH:MM'.")


@dataclass(frozen=True)
class Entry:
    """One camera model of the catalog."""

    key: str
    vendor: str
    model: str
    usb_ids: tuple[str, ...]  # lower-case "vvvv:pppp"
    name_pattern: str
    clock_utc_offset: str
    extensions: frozenset[str]  # lower-case, no dot
    pattern: re.Pattern[str] = field(compare=False, repr=False)
    utc_offset: timedelta = field(compare=False, repr=False)


class NameInfo(NamedTuple):
    """What a recording's file name says."""

    recorded_start: str | None  # RFC 3339 UTC
    important: bool
    officer: str | None


@dataclass(frozen=True)
class Catalog:
    entries: tuple[Entry, ...]
    source: Path | None = None

    def get(self, key: str) -> Entry:
        """The entry ``key``; ConfigError (naming the catalog) if there is none."""
        for entry in self.entries:
            if entry.key == key:
                return entry
        known = ", ".join(e.key for e in self.entries) or "none"
        raise ConfigError(f"device catalog {self.source}: no entry {key!r} (known: {known})")

    def guess(self, names: list[str]) -> Entry | None:
        """The entry whose name pattern matches most of ``names``; None if none matches any.

        For cameras the catalog does not know by USB id.  Ties go to entries of
        real cameras (with USB ids) before the others (simulated cameras), then
        to the catalog's order, so the guess is stable.
        """
        best: tuple[int, int, int] | None = None
        chosen = None
        for order, entry in enumerate(self.entries):
            hits = sum(1 for name in names if entry.pattern.fullmatch(name))
            rank = (hits, 1 if entry.usb_ids else 0, -order)
            if hits and (best is None or rank > best):
                best, chosen = rank, entry
        return chosen

    def match_usb(self, vid_pid: str) -> Entry | None:
        """The entry listing USB id ``vid_pid`` ("VID:PID", any case), or None."""
        wanted = vid_pid.lower()
        for entry in self.entries:
            if wanted in entry.usb_ids:
                return entry
        return None


def _check_entry(raw: _RawEntry, where: str, problems: list[str]) -> Entry | None:
    before = len(problems)
    usb_ids = []
    for i, usb_id in enumerate(raw.usb_ids):
        if not _USB_ID.fullmatch(usb_id):
            problems.append(f"{where}.usb_ids[{i}]: {usb_id!r} is not 'VID:PID' in hex "
                            "(e.g. '0603:8612')")
        usb_ids.append(usb_id.lower())
    pattern = None
    try:
        pattern = re.compile(raw.name_pattern)
    except re.error as exc:
        problems.append(f"{where}.name_pattern: not a valid regular expression ({exc})")
    if pattern is not None:
        unknown = set(pattern.groupindex) - GROUPS
        if unknown:
            problems.append(f"{where}.name_pattern: unknown group(s) {', '.join(sorted(unknown))}"
                            f" (allowed: {', '.join(sorted(GROUPS))})")
    offset = timedelta(0)
    m = _OFFSET.fullmatch(raw.clock_utc_offset)
    if m is None or int(m.group(2)) > 14 or int(m.group(3)) > 59:
        problems.append(f"{where}.clock_utc_offset: {raw.clock_utc_offset!r} is not '+HH:MM' "
                        "or '-HH:MM'")
    else:
        offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        if m.group(1) == "-":
            offset = -offset
    if not raw.extensions:
        problems.append(f"{where}.extensions: must list at least one extension")
    for i, ext in enumerate(raw.extensions):
        if not re.fullmatch(r"[A-Za-z0-9]{1,8}", ext):
            problems.append(f"{where}.extensions[{i}]: {ext!r} is not an extension like 'mp4' "
                            "(letters and digits, no dot)")
    if len(problems) > before or pattern is None:
        return None
    return Entry(
        key=raw.key, vendor=raw.vendor, model=raw.model, usb_ids=tuple(usb_ids),
        name_pattern=raw.name_pattern, clock_utc_offset=raw.clock_utc_offset,
        extensions=frozenset(e.lower() for e in raw.extensions),
        pattern=pattern, utc_offset=offset,
    )


def parse(doc: dict[str, Any], source: Path | None = None) -> Catalog:
    """Validate a parsed catalog document; ConfigError lists every problem."""
    problems: list[str] = []
    for name in doc:
        if name != "device":
            problems.append(f"{name}: unknown key (the catalog holds [[device]] entries only)")
    devices = doc.get("device", [])
    if not isinstance(devices, list):
        problems.append("device: expected an array of tables ([[device]])")
        devices = []
    entries: list[Entry] = []
    seen_keys: dict[str, str] = {}
    seen_usb: dict[str, str] = {}
    for i, table in enumerate(devices, start=1):
        key: object = table.get("key") if isinstance(table, dict) else None
        where = f"device[{i}]({key})" if isinstance(key, str) else f"device[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table")
            continue
        before = len(problems)
        raw = load_section(_RawEntry, table, where, problems)
        if len(problems) > before:
            continue
        entry = _check_entry(raw, where, problems)
        if entry is None:
            continue
        if entry.key in seen_keys:
            problems.append(f"{where}.key: {entry.key!r} already used by {seen_keys[entry.key]}")
        seen_keys.setdefault(entry.key, where)
        for usb_id in entry.usb_ids:
            if usb_id in seen_usb:
                problems.append(f"{where}.usb_ids: {usb_id} already listed by {seen_usb[usb_id]}")
            seen_usb.setdefault(usb_id, where)
        entries.append(entry)
    if problems:
        raise ConfigError(f"device catalog {source or '(text)'} is invalid "
                          f"({len(problems)} problems)", problems)
    return Catalog(tuple(entries), source)


def load(path: str | Path | None = None) -> Catalog:
    """Read and validate the catalog file at ``path``.

    None means the catalog shipped inside the package (config/devices.toml in
    the source tree), found with importlib.resources wherever bwc-agent is
    installed.
    """
    source = Path(path) if path is not None else packaged.path(packaged.CATALOG)
    try:
        text = source.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read device catalog {source}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"device catalog {source}: not UTF-8 text ({exc})") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"device catalog {source}: TOML syntax error: {exc}") from exc
    return parse(doc, source)


def name_fields(entry: Entry, name: str) -> dict[str, str]:
    """The non-empty named groups of ``entry``'s pattern in file name ``name`` ({} if no match)."""
    base = name.rsplit("/", 1)[-1]
    m = entry.pattern.fullmatch(base)
    if m is None:
        return {}
    return {k: v for k, v in m.groupdict().items() if v}


def local_start(entry: Entry, start: str) -> datetime | None:
    """``YYYYMMDDhhmmss`` in the camera's local time as an aware datetime, or None if invalid."""
    try:
        naive = datetime.strptime(start, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return naive.replace(tzinfo=timezone(entry.utc_offset))


def parse_name(entry: Entry, name: str) -> NameInfo:
    """Read recorded start (RFC 3339 UTC), important flag and officer from a file name.

    A name that does not match gives ``NameInfo(None, False, None)``; an
    impossible date (month 13) gives no start but keeps the other fields.
    """
    fields = name_fields(entry, name)
    start = None
    if "start" in fields:
        local = local_start(entry, fields["start"])
        start = rfc3339(local) if local is not None else None
    return NameInfo(start, bool(fields.get("important")), fields.get("officer"))


def format_name(entry: Entry, *, serial: str, officer: str, start: datetime, seq: int,
                important: bool, ext: str) -> str:
    """A GA/T 947-style name ``<serial>_<officer>_<YYYYMMDDhhmmss>_<seq4>[_IMP].<EXT>``.

    ``start`` is converted to the entry's clock offset.  The result is
    checked against the entry's pattern, so simulated cameras and the
    catalog cannot drift apart.
    """
    local = start.astimezone(timezone(entry.utc_offset))
    name = (f"{serial}_{officer}_{local:%Y%m%d%H%M%S}_{seq:04d}"
            f"{'_IMP' if important else ''}.{ext.upper()}")
    if not entry.pattern.fullmatch(name):
        raise ValueError(f"name {name!r} does not match catalog entry {entry.key!r} pattern "
                         f"{entry.name_pattern!r} (check serial {serial!r} and officer "
                         f"{officer!r})")
    return name
