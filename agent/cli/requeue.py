"""``bwc-agent requeue``: send quarantined clips back to the upload queue."""

from __future__ import annotations

import argparse
import getpass

from agent.cli.common import add_config_arg, load_config, open_store
from agent.requeue import RequeueRefused, requeue_clip, requeue_problem


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "requeue", help="send a quarantined clip back to the upload queue",
        description="Send quarantined clips whose upload failed back to the upload queue "
                    "(after the cause was fixed).  A running agent picks them up within 30 s.")
    add_config_arg(parser)
    parser.add_argument("--clip", required=True, action="append", metavar="ID",
                        help="clip id (or a unique prefix); repeat for several")
    parser.add_argument("--note", metavar="TEXT",
                        help="why, for the custody log (e.g. the ticket that fixed the cause)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    store = open_store(config, readonly=False)
    # All or nothing: every clip is found and requeueable before any of them changes.
    rows = [store.find_clip(ref) for ref in args.clip]
    problems = [p for p in map(requeue_problem, rows) if p is not None]
    if problems:
        raise RequeueRefused("; ".join(problems) + "; nothing was requeued")
    for row in rows:
        body = requeue_clip(store, row["clip_id"], by=getpass.getuser(), note=args.note)
        print(f"{row['clip_id']}  {row['name']}  quarantined -> sealed "
              f"(was: {body['previous_reason']})")
    return 0
