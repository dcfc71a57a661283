"""``bwc-agent outbox``: what the station still owes the platform; retry or drop a stuck item."""

from __future__ import annotations

import argparse
import getpass

from agent.cli.common import add_config_arg, load_config, open_store, print_json, table
from agent.outboxcare import drop_item, list_items, retry_item, show_item


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "outbox", help="list the events waiting for the platform; retry or drop one",
        description="Events and messages the station has not delivered to the platform's "
                    "broker yet, oldest first.  An item the broker refused is retried at the "
                    "next connection, or at once with `retry`; `drop` never sends it (a "
                    "custody log entry says who and why; evidence events need --force).")
    add_config_arg(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="the items waiting (default)")
    listing.add_argument("--dropped", action="store_true", help="the dropped items instead")
    show = actions.add_parser("show", help="one item, with its payload")
    show.add_argument("id", type=int)
    retry = actions.add_parser("retry", help="publish a refused item again now")
    retry.add_argument("id", type=int)
    retry.add_argument("--note", metavar="TEXT", help="why, for the custody log")
    drop = actions.add_parser("drop", help="never publish an item (custody log entry)")
    drop.add_argument("id", type=int)
    drop.add_argument("--reason", required=True, metavar="TEXT",
                      help="why, for the custody log (e.g. the ticket)")
    drop.add_argument("--force", action="store_true",
                      help="also an evidence event (clip.*): the platform never receives it")
    parser.set_defaults(handler=run, action=None, dropped=False)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    action = args.action or "list"
    store = open_store(config, readonly=action in ("list", "show"))
    try:
        if action == "list":
            items = list_items(store, dropped=args.dropped)
            if args.json:
                print_json(items)
                return 0
            if not items:
                print("the outbox is empty: the platform's broker has everything"
                      if not args.dropped else "no item was dropped")
                return 0
            print(table(("ID", "CREATED", "TYPE", "CLIP", "REFUSED", "LAST ERROR"), [
                (str(i["id"]), i["created_at"], i["type"] or i["topic"].rsplit("/", 1)[-1],
                 i["clip_id"] or "-", str(i["refusals"]),
                 (i["drop_reason"] if args.dropped else i["last_error"]) or "-")
                for i in items]))
            return 0
        if action == "show":
            print_json(show_item(store, args.id))
            return 0
        by = getpass.getuser()
        if action == "retry":
            body = retry_item(store, args.id, by=by, note=args.note)
            print(f"outbox item {args.id} ({body['type']}): retried; a running agent "
                  "publishes it within a second")
        else:
            body = drop_item(store, args.id, by=by, reason=args.reason, force=args.force)
            print(f"outbox item {args.id} ({body['type']}): dropped, never published; "
                  f"custody log entry outbox.dropped by {by}")
        if args.json:
            print_json(body)
        return 0
    finally:
        store.close()
