"""``bwc-agent officers``: the officer roster the station holds (or held), and roster import.

- ``officers roster --config F [--version N] [--json]`` — the roster now, or as
  it was at version N (rebuilt from the signed messages the station kept:
  what it believed when it sealed a clip naming that version);
- ``officers import --config F (--snapshot | --update) FILE`` — accept a signed
  roster message from a file (a station without a platform connection).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg, load_config, open_store, print_json, table
from agent.errors import ConfigError, IntegrityError
from agent.officers import registry
from agent.officers.binding import rebind_pending
from agent.officers.credentials import parse_credential
from agent.officers.roster import SNAPSHOT, UPDATE, RosterMessage, parse_message, state_at
from agent.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("officers", help="the officer roster: show it, import it")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("roster", help="show the roster held now, or at a version")
    add_config_arg(show)
    show.add_argument("--version", type=int, metavar="N", help="the roster as at version N")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=run_roster)
    imp = actions.add_parser("import", help="accept a signed roster message from a file")
    add_config_arg(imp)
    kind = imp.add_mutually_exclusive_group(required=True)
    kind.add_argument("--snapshot", type=Path, metavar="FILE")
    kind.add_argument("--update", type=Path, metavar="FILE")
    imp.set_defaults(handler=run_import)


def roster_at(store: Store, keys: registry.Keys, version: int | None) -> dict[str, Any]:
    """The roster at ``version`` (None: the one held now) as shown to people."""
    messages: list[RosterMessage] = []
    for kept in registry.messages(store):
        messages.append(parse_message(kept["message"], kept["kind"], keys))
    if not messages:
        raise ConfigError("this station holds no officer roster yet")
    target = version if version is not None else registry.held_version(store)
    state = state_at(messages, target)
    if state is None:
        kept_versions = ", ".join(str(m.version) for m in messages)
        raise ConfigError(f"the station never held roster version {target} (it kept: "
                          f"{kept_versions})")
    carried = {c.credential_id: c for m in messages for c in m.credentials}
    for row in store.query("SELECT envelope FROM officer_credentials"):
        credential = parse_credential(json.loads(row["envelope"]))
        carried.setdefault(credential.credential_id, credential)
    entries = []
    for entry in sorted(state.entries.values(), key=lambda e: (e.officer_id, e.credential_id)):
        item: dict[str, Any] = {"credential_id": entry.credential_id,
                                "officer_id": entry.officer_id,
                                "revoked": None}
        known = carried.get(entry.credential_id)
        if known is not None:
            item.update(known.summary())
        if entry.revocation is not None:
            item["revoked"] = {"at": entry.revocation.revoked_at,
                               "reason": entry.revocation.reason}
        entries.append(item)
    source = next(m for m in messages if m.version == target)
    return {"version": target, "issued_at": source.issued_at, "credentials": entries}


def run_roster(args: argparse.Namespace) -> int:
    config = load_config(args)
    store = open_store(config)
    keys = registry.load_keys(config.custody.credential_key_file)
    try:
        shown = roster_at(store, keys, args.version)
    except IntegrityError as exc:
        raise ConfigError(f"a kept roster message no longer verifies: {exc}") from None
    if args.json:
        print_json(shown)
        return 0
    print(f"roster version {shown['version']} issued {shown['issued_at']}")
    rows = [[c["officer_id"], c.get("name", "?"), c["credential_id"], c.get("unit_name", ""),
             f"{c.get('not_before', '?')} .. {c.get('not_after', '?')}",
             ",".join(c.get("cameras", [])) or "any",
             f"REVOKED {c['revoked']['at']} {c['revoked']['reason']}" if c["revoked"] else "-"]
            for c in shown["credentials"]]
    print(table(["OFFICER", "NAME", "CREDENTIAL", "UNIT", "VALID", "CAMERAS", "REVOKED"], rows))
    return 0


def run_import(args: argparse.Namespace) -> int:
    config = load_config(args)
    keys = registry.load_keys(config.custody.credential_key_file)
    if not keys:
        raise ConfigError("custody.credential_key_file is not set: rosters cannot be checked")
    path: Path = args.snapshot or args.update
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    store = open_store(config, readonly=False)
    accepted = registry.accept(store, raw, SNAPSHOT if args.snapshot else UPDATE, keys)
    verified = rebind_pending(store, keys) if accepted.changed else []
    state = "accepted" if accepted.changed else "already held"
    print(f"roster version {accepted.version}: {state}"
          + (f"; officers of {len(verified)} earlier clip(s) verified" if verified else ""))
    return 0
