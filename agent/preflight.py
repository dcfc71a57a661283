"""Preflight: every check ``bwc-agent run`` makes before it starts work, in one place.

``run`` calls :func:`check` before it writes anything (no data directory,
no key, no database, no lock file), and ``config check`` calls the same
function, so the two cannot disagree: whatever would stop the daemon is
reported by ``config check`` first, every problem at once, each naming its
configuration key, and both exit 2.  The unit does not restart on 2
(``RestartPreventExitStatus=2``): a broken configuration is one failed
start with its reasons in the journal, not a restart loop.

Checked for the user running the command (the unit's ``User=``):

* every file the configuration names (``*_file`` keys, device catalogs)
  exists, is a regular file and that user can open it for reading;
* the device drivers start as ``run`` starts them: catalogs parse, catalog
  entries exist, camera password files are private; watched directories
  (``*_root``) exist (the simulated driver's root may be created);
* the officer credential key is an Ed25519 public key;
* the platform: the CA file, client certificate and key make the TLS
  context the MQTT client and the uploader make (agent.sync.tlsfiles), the
  client key is 0600, the platform key is an Ed25519 public key,
  the broker password file is 0600;
* the station identity: the key is 0600 and Ed25519 and the certificate
  is for it; a missing key is made at the first start, but never on a
  station that already signed;
* the data directory and what it holds belong to that user and are
  writable (a tree left to root by ``keys init`` as root is named with the
  ``chown -R`` that fixes it); the store is not newer than this agent.

Everything here only reads: files are opened read-only, and so is the
store (once its directory is known to be the user's), nothing is created.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from agent.config import Config, PlatformSection
from agent.custody.keys import (
    StationKey,
    load_public_key,
)
from agent.custody.sealer import identity_problem, key_paths
from agent.errors import AgentError, ConfigError
from agent.officers import registry as officers_registry
from agent.pki.identity import check_own_identity
from agent.store.db import SCHEMA_VERSION
from agent.sync.service import check_private, read_secret
from agent.sync.tlsfiles import client_context
from drivers import REGISTRY
from drivers.base import DeviceContext

STORE_FILE = "state.db"
# Driver roots the driver makes itself at start (the simulated cameras' directory).
_CREATED_AT_START = frozenset({"devices.simulated.root"})
# Files the agent writes itself (IT accounts: `bwc-agent web user add` makes the file).
_WRITTEN_BY_AGENT = frozenset({"web.users_file"})
# Config attributes whose TOML table has another name.
_TOML_KEYS = {"device_policy": "devices"}
_FOREIGN_SHOWN = 3


@dataclass(frozen=True)
class AgentUser:
    """The user the checks are made for: the one running this process."""

    uid: int
    name: str

    @classmethod
    def current(cls) -> AgentUser:
        uid = os.geteuid()
        try:
            return cls(uid, pwd.getpwuid(uid).pw_name)
        except KeyError:
            return cls(uid, str(uid))

    def can(self, path: Path, mode: int) -> bool:
        return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)

    def owner_name(self, uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)


@dataclass
class Report:
    """A station that passed; ``notes`` say what its first start will do."""

    notes: list[str] = field(default_factory=list)


def check(config: Config) -> Report:
    """Check everything ``run`` needs; ConfigError lists every problem (exit status 2)."""
    user = AgentUser.current()
    problems: list[str] = []
    report = Report()
    bad: set[str] = set()
    for key, path in _named_paths(config):
        problem = _path_problem(key, path, user)
        if problem is not None:
            problems.append(problem)
            bad.add(key)
    problems.extend(_driver_problems(config, bad))
    if config.custody.credential_key_file is not None and \
            "custody.credential_key_file" not in bad:
        try:
            officers_registry.load_keys(config.custody.credential_key_file)
        except ConfigError as exc:
            problems.append(str(exc))
    if config.platform is not None:
        problems.extend(_platform_problems(config.platform, bad))
    problems.extend(_data_dir_problems(config, user, report))
    if problems:
        where = f"{config.source}: " if config.source else ""
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"{where}bwc-agent cannot start ({count})", problems)
    return report


# --- files and directories the configuration names -------------------------------------------


def _sections(config: Config) -> Iterator[tuple[str, Any]]:
    """Every section of the configuration, by its key path (new sections included)."""
    for fld in dataclasses.fields(config):
        value = getattr(config, fld.name)
        if dataclasses.is_dataclass(value) and fld.name in _TOML_KEYS:
            yield _TOML_KEYS[fld.name], value
        elif dataclasses.is_dataclass(value):
            yield fld.name, value
    yield from ((f"devices.{key}", section) for key, section in config.devices.items())


def _named_paths(config: Config) -> Iterator[tuple[str, Path]]:
    """(key path, value) of every file and watched directory the configuration names."""
    for prefix, section in _sections(config):
        if section is None:
            continue
        for fld in dataclasses.fields(section):
            value = getattr(section, fld.name)
            named = fld.name.endswith(("_file", "_root")) or fld.name in ("catalog", "root")
            key = f"{prefix}.{fld.name}"
            if isinstance(value, Path) and named and key not in _WRITTEN_BY_AGENT:
                yield key, value


def _path_problem(key: str, path: Path, user: AgentUser) -> str | None:
    directory = key.endswith("root")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if key in _CREATED_AT_START:
            return _creatable_problem(key, path, user)
        return f"{key}: {path} does not exist"
    except OSError as exc:
        return f"{key}: cannot look at {path}: {exc.strerror}"
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            return f"{key}: {path} is not a directory"
        if not user.can(path, os.R_OK | os.X_OK):
            return f"{key}: user {user.name} cannot list {path} (fix its permissions)"
        return None
    if not stat.S_ISREG(st.st_mode):
        return f"{key}: {path} is not a regular file"
    try:
        # Opening is the one test that also honours ACLs; O_NONBLOCK: never wait on a FIFO.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        return f"{key}: user {user.name} cannot read {path}: {exc.strerror}"
    os.close(fd)
    return None


def _creatable_problem(key: str, path: Path, user: AgentUser) -> str | None:
    """None if ``path`` is missing but ``user`` can create it (and its parents)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{key}: cannot create {path}: {ancestor} is not a directory"
    if not user.can(ancestor, os.W_OK | os.X_OK):
        return f"{key}: {path} does not exist and user {user.name} cannot create it in {ancestor}"
    return None


# --- drivers ---------------------------------------------------------------------------------


def _driver_problems(config: Config, bad: set[str]) -> list[str]:
    """Build each driver's detector as ``run`` does (reads its catalog and password file)."""
    problems: list[str] = []
    mount = config.mount
    context = DeviceContext(policy=config.device_policy,
                            run_dir=mount.run_dir if mount is not None else None)
    for key, driver_config in config.devices.items():
        if any(k.startswith(f"devices.{key}.") for k in bad):
            continue  # its files are already reported
        try:
            REGISTRY[key].make_detector(driver_config, context)
        except ConfigError as exc:
            problems.extend([f"devices.{key}: {exc}: {p}" for p in exc.problems]
                            or [f"devices.{key}: {exc}"])
        except AgentError as exc:
            problems.append(f"devices.{key}: {exc.diagnostics()}")
        except Exception as exc:
            problems.append(f"devices.{key}: the driver failed to start: {exc}")
    return problems


# --- platform --------------------------------------------------------------------------------


def _platform_problems(p: PlatformSection, bad: set[str]) -> list[str]:
    problems: list[str] = []
    for key, url in (("platform.mqtt_url", p.mqtt_url), ("platform.upload_url", p.upload_url)):
        if not urlsplit(url).hostname:
            problems.append(f"{key}: {url!r} names no host")
    tls_keys = {"platform.ca_file", "platform.cert_file", "platform.key_file"}
    if not tls_keys & bad:
        try:
            # The very context the MQTT client and the uploader build from these files.
            client_context(p.ca_file, p.cert_file, p.key_file)
        except ConfigError as exc:
            problems.append(str(exc))
    if p.key_file is not None and "platform.key_file" not in bad:
        try:
            check_private(p.key_file, "platform.key_file")
        except ConfigError as exc:
            problems.append(str(exc))
    if "platform.platform_key_file" not in bad:
        try:
            load_public_key(p.platform_key_file)
        except ConfigError as exc:
            problems.append(f"platform.platform_key_file: {exc}")
    if p.password_file is not None and "platform.password_file" not in bad:
        try:
            read_secret(p.password_file, "platform.password_file")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


# --- data directory, store and station identity ----------------------------------------------


def _data_dir_problems(config: Config, user: AgentUser, report: Report) -> list[str]:
    data_dir = config.data_dir
    try:
        st = os.stat(data_dir)
    except FileNotFoundError:
        problem = _creatable_problem("station.data_dir", data_dir, user)
        if problem is None:
            report.notes.append(f"the data directory {data_dir} will be created at the first "
                                "start")
            report.notes.append(_new_identity_note(config))
        return [problem] if problem else []
    except OSError as exc:
        return [f"station.data_dir: cannot look at {data_dir}: {exc.strerror}"]
    if not stat.S_ISDIR(st.st_mode):
        return [f"station.data_dir: {data_dir} is not a directory"]
    problems = _ownership_problems(data_dir, user)
    if not problems and not user.can(data_dir, os.R_OK | os.W_OK | os.X_OK):
        problems.append(f"station.data_dir: user {user.name} cannot write to {data_dir}")
    if os.statvfs(data_dir).f_flag & os.ST_RDONLY:
        problems.append(f"station.data_dir: {data_dir} is on a read-only file system")
    if problems:
        return problems  # what is inside cannot be judged until the user can reach it
    db = data_dir / STORE_FILE
    facts, problem = _store_facts(db)
    if problem is None:
        problem = _schema_problem(db, facts, report)
    if problem is not None:
        return [problem]
    return _identity_problems(config, facts.signed, report)


def _ownership_problems(data_dir: Path, user: AgentUser) -> list[str]:
    """The data directory, its entries and those of keys/ and vault/ must be the user's.

    Only those levels are looked at (the vault's object tree can hold
    millions of files); ``chown -R`` fixes everything below as well.
    """
    paths = [data_dir]
    for sub in (data_dir, data_dir / "keys", data_dir / "vault"):
        try:
            with os.scandir(sub) as entries:
                paths.extend(Path(entry.path) for entry in entries)
        except OSError:
            continue  # missing (made at start) or unreadable (then its owner is reported)
    foreign: list[tuple[Path, int]] = []
    for path in paths:
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            continue
        if owner != user.uid:
            foreign.append((path, owner))
    if not foreign:
        return []
    shown = ", ".join(f"{p} is owned by {user.owner_name(uid)}" for p, uid in
                      foreign[:_FOREIGN_SHOWN])
    more = f" and {len(foreign) - _FOREIGN_SHOWN} more" if len(foreign) > _FOREIGN_SHOWN else ""
    fix = f"chown -R {user.name}: {data_dir}"
    owners = {uid for _p, uid in foreign}
    if len(owners) == 1 and foreign[0][0] == data_dir and user.uid == 0:
        # root checking a station that belongs to its agent user: run as that user instead.
        other = user.owner_name(foreign[0][1])
        fix = f"run bwc-agent as {other} (runuser -u {other} -- bwc-agent ...), or {fix}"
    return [f"station.data_dir: bwc-agent runs as {user.name}, and everything in its data "
            f"directory must be {user.name}'s: {shown}{more}; fix: {fix}"]


@dataclass
class _StoreFacts:
    schema: int = 0
    signed: bool = False  # a signed checkpoint or manifest exists


def _store_facts(db: Path) -> tuple[_StoreFacts, str | None]:
    """Schema version and whether the station has signed, or the problem reading them.

    Read-only, WAL included (what a crash left in the write-ahead log
    counts).  Called only once the data directory is known to be the
    user's: SQLite may create its shared-memory file, owned by that user.
    """
    if not db.exists():
        return _StoreFacts(), None
    try:
        conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return _StoreFacts(), f"station.data_dir: cannot open the station database {db}: {exc}"
    try:
        facts = _StoreFacts(schema=int(conn.execute("PRAGMA user_version").fetchone()[0]))
        try:
            row = conn.execute("SELECT (SELECT COUNT(*) FROM checkpoints) + (SELECT COUNT(*) "
                               "FROM clips WHERE manifest IS NOT NULL)").fetchone()
            facts.signed = bool(row and row[0])
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # tables not made yet: nothing signed
                raise
        return facts, None
    except sqlite3.Error as exc:
        return _StoreFacts(), f"station.data_dir: {db} is not a readable station database ({exc})"
    finally:
        conn.close()


def _schema_problem(db: Path, facts: _StoreFacts, report: Report) -> str | None:
    if facts.schema > SCHEMA_VERSION:
        return (f"station.data_dir: the station database {db} has schema version "
                f"{facts.schema}, newer than this agent ({SCHEMA_VERSION}): a newer bwc-agent "
                "ran here; run that version, or restore the data directory from the backup "
                "made before the upgrade (docs/OPERATIONS.md, Upgrade and roll back)")
    if 0 < facts.schema < SCHEMA_VERSION:
        report.notes.append(f"the station database will be migrated from schema version "
                            f"{facts.schema} to {SCHEMA_VERSION} at the first start")
    return None


def _new_identity_note(config: Config) -> str:
    key_path, _cert_path = key_paths(config)
    return (f"the station key {key_path} and a development certificate will be created at the "
            "first start")


def _identity_problems(config: Config, has_signed: bool, report: Report) -> list[str]:
    key_path, cert_path = key_paths(config)
    problem = identity_problem(key_path, cert_path, has_signed)
    if problem is not None:
        return [f"station identity: {problem}"]
    if not key_path.exists():
        report.notes.append(_new_identity_note(config))
        return []
    try:
        key = StationKey.load(key_path)
        if cert_path.exists():
            # Key and certificate belong together, the certificates name station.id, the
            # chain holds: what the start checks (agent/pki/identity.py).
            check_own_identity(config, key)
        else:
            report.notes.append(f"a development certificate {cert_path} will be made for the "
                                "station key at the first start")
    except ConfigError as exc:
        return [f"station identity: {exc.diagnostics()}"]
    return []
