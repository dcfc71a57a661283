"""The checks of this machine: configuration, files and their modes, disk, clock, store, log."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent import __version__, daemonstate, preflight
from agent.config import Config
from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.custody.keys import (
    StationKey,
    check_key_matches_certificate,
    keyid_of,
    load_certificate,
    load_public_key,
)
from agent.custody.sealer import key_paths
from agent.doctor import FAIL, OK, WARN, Environment, Finding
from agent.errors import AgentError, ConfigError
from agent.mount import units
from agent.pki.status import certificate_status
from agent.store.db import SCHEMA_VERSION
from agent.store.files import open_to_others

# Free inodes below these shares of the file system: warn, fail.
INODES_WARN, INODES_FAIL = 0.05, 0.01
TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


def configuration(config: Config, env: Environment) -> Iterator[Finding]:
    try:
        report = preflight.check(config)
    except ConfigError as exc:
        for problem in exc.problems or [str(exc)]:
            yield Finding(FAIL, "config", problem, "fix it in the configuration or on disk, "
                          "then `bwc-agent config check` until it says OK")
        return
    yield Finding(OK, "config", f"bwc-agent {__version__}: the configuration, the device "
                  "catalog and every file they name are usable")
    for note in report.notes:
        yield Finding(WARN, "config", note, "expected on a new station; otherwise restore "
                      "the data directory from its backup")


def daemon(config: Config, env: Environment) -> Iterator[Finding]:
    facts = daemonstate.read(config.data_dir)
    line = daemonstate.describe(facts)
    if facts["state"] == "running":
        yield Finding(OK, "agent", line)
    elif facts["state"] == "unresponsive":
        yield Finding(FAIL, "agent", line, "systemctl restart bwc-agent; send the journal "
                      "(journalctl -u bwc-agent -b) with the report")
    else:
        yield Finding(WARN, "agent", line, "systemctl start bwc-agent (journalctl -u "
                      "bwc-agent -b says why it stopped)")


def _mode(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def key_files(config: Config, env: Environment) -> Iterator[Finding]:
    """Secrets 0600 and the agent's; trust anchors root's, not writable, not world-readable."""
    key_path, _cert = key_paths(config)
    secrets = [("station key", key_path)]
    if config.platform is not None:
        secrets += [(key, path) for key, path in (
            ("platform.key_file", config.platform.key_file),
            ("platform.password_file", config.platform.password_file)) if path is not None]
    if config.web is not None and config.web.tls_key_file is not None:
        secrets.append(("web.tls_key_file", config.web.tls_key_file))
    bad = False
    for what, path in secrets:
        st = _mode(path)
        if st is None:
            continue  # missing files are the configuration check's
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            bad = True
            yield Finding(FAIL, "keys", f"{what} {path} is mode {mode:04o}: group or others "
                          "can read it", f"chmod 600 {path}")
    anchors = []
    if config.platform is not None:
        anchors += [("platform.ca_file", config.platform.ca_file),
                    ("platform.platform_key_file", config.platform.platform_key_file)]
    if config.custody.credential_key_file is not None:
        anchors.append(("custody.credential_key_file", config.custody.credential_key_file))
    for what, path in anchors:
        st = _mode(path)
        if st is None:
            continue
        mode = stat.S_IMODE(st.st_mode)
        problems = []
        if st.st_uid != 0:
            problems.append("not owned by root")
        writers = [who for who, bit in (("group", 0o020), ("others", 0o002)) if mode & bit]
        if writers:
            problems.append(f"writable by {' and '.join(writers)}")
        if mode & 0o004:
            problems.append("readable by every user")
        if problems:
            bad = True
            yield Finding(WARN, "keys", f"trust anchor {what} {path} (mode {mode:04o}): "
                          f"{', '.join(problems)}; whoever can change it decides what the "
                          "station trusts", f"chown root:bwc-agent {path} && chmod 0640 {path}")
    if not bad:
        yield Finding(OK, "keys", "secret files are 0600; trust anchors are root's and only "
                      "the agent's group reads them")


def data_directory(config: Config, env: Environment) -> Iterator[Finding]:
    data_dir = config.data_dir
    if not data_dir.is_dir():
        yield Finding(WARN, "data", f"{data_dir} does not exist yet", "start the agent once "
                      "(it makes it), or check station.data_dir")
        return
    problem = open_to_others(data_dir)
    if problem is not None:
        yield Finding(FAIL, "data", problem.split("; fix:")[0], f"chmod 0700 {data_dir}")
        return
    db = data_dir / preflight.STORE_FILE
    if not db.exists():
        yield Finding(WARN, "data", f"{db} does not exist yet", "start the agent once")
        return
    st = os.stat(db)
    if stat.S_IMODE(st.st_mode) & 0o077:
        yield Finding(FAIL, "data", f"the store {db} is mode {stat.S_IMODE(st.st_mode):04o}",
                      f"chmod 600 {db}* (the agent narrows it at its next start)")
        return
    yield Finding(OK, "data", f"{data_dir} and its store are the agent's alone")


def disk(config: Config, env: Environment) -> Iterator[Finding]:
    path = config.data_dir if config.data_dir.exists() else config.data_dir.parent
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        yield Finding(FAIL, "disk", f"cannot look at {path}: {exc.strerror}",
                      "check station.data_dir and its disk")
        return
    free = vfs.f_bavail * vfs.f_frsize
    mib = free // 2**20
    stop, low = config.ingest.min_free_mb, config.retention.low_water_mb
    if mib < stop:
        yield Finding(FAIL, "disk", f"{mib} MiB free under {path}: below ingest.min_free_mb "
                      f"({stop}); cameras are not offloaded", "check the platform connection "
                      "(acknowledged clips are purged) and what else fills the disk")
    elif mib < low:
        yield Finding(WARN, "disk", f"{mib} MiB free under {path}: below "
                      f"retention.low_water_mb ({low})", "check the platform connection and the "
                      "backlog; acknowledged clips are purged early meanwhile")
    else:
        yield Finding(OK, "disk", f"{mib} MiB free under {path}")
    if vfs.f_files:
        share = vfs.f_favail / vfs.f_files
        text = f"{vfs.f_favail} of {vfs.f_files} inodes free ({share:.1%})"
        if share < INODES_FAIL:
            yield Finding(FAIL, "disk", text, "the vault cannot take more files: free inodes "
                          "(remove other files on that file system) or move data_dir")
        elif share < INODES_WARN:
            yield Finding(WARN, "disk", text, "plan more inodes (mkfs -i) or a larger disk")
        else:
            yield Finding(OK, "disk", text)


def clock(config: Config, env: Environment) -> Iterator[Finding]:
    """Synchronised per timedatectl, else per adjtimex(2); skew to the platform: remote.py."""
    synced: bool | None = None
    source = ""
    program = shutil.which(env.timedatectl)
    if program is not None:
        try:
            done = subprocess.run([program, "show", "-p", "NTPSynchronized", "--value"],
                                  capture_output=True, text=True, timeout=env.deadline_s)
            if done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
                synced, source = done.stdout.strip() == "yes", "timedatectl"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if synced is None:
        state = _adjtimex_state()
        if state is not None:
            synced, source = state != TIME_ERROR, "adjtimex"
    if synced is None:
        yield Finding(WARN, "clock", "cannot tell whether the clock is synchronised "
                      "(no timedatectl answer, adjtimex not allowed here)",
                      "timedatectl status on the station")
    elif synced:
        yield Finding(OK, "clock", f"the clock is synchronised ({source})")
    else:
        yield Finding(WARN, "clock", f"the clock is not synchronised ({source}): manifests, "
                      "the custody log and command expiry depend on it",
                      "timedatectl set-ntp true, and check that the NTP server is reachable "
                      "(timedatectl timesync-status)")


def _adjtimex_state() -> int | None:
    buffer = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return None
    return state if state >= 0 else None


def certificate(config: Config, env: Environment) -> Iterator[Finding]:
    status = certificate_status(config)
    station = status["station"]
    state = station["state"]
    if state in ("missing", "unreadable"):
        yield Finding(FAIL, "cert", f"station certificate: {'; '.join(station['problems'])}",
                      "bwc-agent keys init (new station), or restore keys/ from the backup")
        return
    summary = (f"station certificate {station.get('subject', '')} valid until "
               f"{station.get('not_after')} ({station.get('days_left', 0):.0f} days left)")
    problems = station.get("problems") or []
    if state in ("expired", "not-yet-valid", "invalid"):
        yield Finding(FAIL, "cert", f"{summary}: {state}: {'; '.join(problems)}",
                      "have the platform CA issue a new certificate for this key "
                      "(bwc-agent enroll), and check the clock")
    elif state in ("expiring", "renew-due"):
        yield Finding(WARN, "cert", f"{summary}: {state}", "renew it before it expires "
                      "(bwc-agent enroll)")
    else:
        yield Finding(OK, "cert", summary)
    key_path, cert_path = key_paths(config)
    try:
        check_key_matches_certificate(StationKey.load(key_path), load_certificate(cert_path))
    except AgentError as exc:
        yield Finding(FAIL, "cert", str(exc), "restore the key the certificate was issued for "
                      "from the backup of keys/")


def platform_keys(config: Config, env: Environment) -> Iterator[Finding]:
    if config.platform is None:
        yield Finding(OK, "platform", "no platform configured: the station works offline")
        return
    try:
        load_public_key(config.platform.platform_key_file)
    except ConfigError as exc:
        yield Finding(FAIL, "platform", f"platform key: {exc}", "install the platform's public "
                      "key (PEM, Ed25519) at platform.platform_key_file: without it no ack or "
                      "command is accepted and nothing is released from cameras")
        return
    yield Finding(OK, "platform", f"platform key {config.platform.platform_key_file} present")


def mounts(config: Config, env: Environment) -> Iterator[Finding]:
    roots = [(f"devices.{key}.mount_root", cfg.mount_root) for key, cfg in
             config.devices.items() if isinstance(getattr(cfg, "mount_root", None), Path)]
    for key, root in roots:
        st = _mode(root)
        if st is None:
            yield Finding(FAIL, "mounts", f"{key} {root} does not exist",
                          f"install -d -m 0755 -o root -g root {root}")
        elif config.mount is not None and (st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o022):
            yield Finding(WARN, "mounts", f"{key} {root} is not root's alone (owner uid "
                          f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): another user "
                          "could plant a volume there", f"chown root:root {root} && chmod 0755 "
                          f"{root}")
        else:
            yield Finding(OK, "mounts", f"{key} {root} is there")
    if config.mount is None:
        return
    rule = env.etc("udev", "rules.d", units.RULE_NAME)
    unit = env.etc("systemd", "system", units.UNIT_NAME)
    fix = "bwc-agent install-udev --config <this configuration> (as root)"
    try:
        text = rule.read_text(encoding="utf-8")
    except OSError:
        yield Finding(FAIL, "mounts", f"the udev rule {rule} is not installed: docked cameras "
                      "are not mounted", fix)
        return
    if text != units.render_rule():
        yield Finding(WARN, "mounts", f"the udev rule {rule} differs from this version's",
                      fix)
    elif not unit.exists():
        yield Finding(FAIL, "mounts", f"the mount unit {unit} is not installed", fix)
    else:
        yield Finding(OK, "mounts", f"udev rule {rule} and {unit} installed")


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=30)


def store_integrity(config: Config, env: Environment) -> Iterator[Finding]:
    db = config.data_dir / preflight.STORE_FILE
    if not db.exists():
        yield Finding(WARN, "store", f"no store yet at {db}", "start the agent once")
        return
    try:
        conn = _read_only(db)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)")]
            schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        yield Finding(FAIL, "store", f"cannot read {db}: {exc}", "stop the agent, copy the "
                      "data directory aside, and restore it from the backup "
                      "(docs/OPERATIONS.md, Back up and restore)")
        return
    if rows != ["ok"]:
        yield Finding(FAIL, "store", f"PRAGMA quick_check of {db}: {'; '.join(rows)[:400]}",
                      "stop the agent, copy the data directory aside, and restore it from "
                      "the backup (docs/OPERATIONS.md, Back up and restore)")
    elif schema != SCHEMA_VERSION:
        yield Finding(WARN, "store", f"{db} has schema {schema}, this bwc-agent reads "
                      f"{SCHEMA_VERSION}", "start the agent of this version once (it migrates)")
    else:
        yield Finding(OK, "store", f"{db}: quick_check ok, schema {schema}")


def log_continuity(config: Config, env: Environment) -> Iterator[Finding]:
    """The log prefix hashes to the last signed checkpoint; entries since are whole."""
    db = config.data_dir / preflight.STORE_FILE
    if not db.exists():
        return
    fix = ("run `bwc-agent verify " f"{config.data_dir}` for the full report, and report the "
           "station to the platform operators: its log was changed")
    try:
        conn = _read_only(db)
        try:
            last = conn.execute("SELECT size, root, envelope FROM checkpoints "
                                "ORDER BY size DESC LIMIT 1").fetchone()
            count = conn.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM custody_log"
                                 ).fetchone()
            # Every leaf recomputed from its entry, as an auditor would (streamed).
            leaves: list[bytes] = []
            edited: tuple[int, str] | None = None
            for seq, at, kind, clip_id, body, leaf in conn.execute(
                    "SELECT seq, at, kind, clip_id, body, leaf FROM custody_log ORDER BY seq"):
                entry = {"seq": seq, "at": at, "kind": kind, "clip_id": clip_id,
                         "body": json.loads(body)}
                recomputed = merkle.leaf_hash(canonicalize(entry))
                if recomputed != bytes(leaf) and edited is None:
                    edited = (int(seq), str(kind))
                leaves.append(recomputed)
        finally:
            conn.close()
    except (sqlite3.Error, ValueError, TypeError) as exc:
        yield Finding(FAIL, "log", f"cannot read the custody log: {exc}", fix)
        return
    if edited is not None:
        yield Finding(FAIL, "log", f"entry {edited[0]} ({edited[1]}) no longer hashes to the "
                      "leaf stored when it was logged: it was edited", fix)
        return
    if count[0] != count[1]:
        yield Finding(FAIL, "log", f"the custody log has {count[0]} entries but its last seq "
                      f"is {count[1]}: entries were removed", fix)
        return
    if last is None:
        yield Finding(WARN if leaves else OK, "log", f"{len(leaves)} entries, no signed "
                      "checkpoint yet", "the agent signs one within custody."
                      "checkpoint_interval_s while it runs" if leaves else "")
        return
    size, root, envelope = int(last[0]), str(last[1]), json.loads(last[2])
    if size > len(leaves):
        yield Finding(FAIL, "log", f"the last checkpoint covers {size} entries, the log has "
                      f"{len(leaves)}: entries were removed from its end", fix)
        return
    _key, cert_path = key_paths(config)
    try:
        public: Any = load_certificate(cert_path).public_key()
        payload = json.loads(dsse.verify_envelope(envelope, {keyid_of(public): public},
                                                  expected_type=dsse.CHECKPOINT))
    except (AgentError, ValueError, KeyError) as exc:
        yield Finding(FAIL, "log", f"the last checkpoint's signature does not verify with "
                      f"the station certificate: {exc}", fix)
        return
    actual = merkle.MerkleTree(leaves).root(size).hex()
    if payload.get("root") != root or actual != root:
        yield Finding(FAIL, "log", f"the first {size} entries hash to {actual}, the checkpoint "
                      f"signed at {payload.get('at')} says {payload.get('root')}", fix)
        return
    yield Finding(OK, "log", f"{len(leaves)} entries, each whole; the first {size} hash to "
                  f"the checkpoint signed at {payload.get('at')}; {len(leaves) - size} since")
