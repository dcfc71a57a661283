"""``bwc-agent tag``: tag a clip with a case ID at the station."""

from __future__ import annotations

import argparse
import getpass

from agent.cli.common import add_config_arg, load_config, open_store
from agent.tagging import tag_clip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tag", help="tag a clip with a case ID")
    add_config_arg(parser)
    parser.add_argument("--clip", required=True, action="append", metavar="ID",
                        help="clip id (or a unique prefix); repeat for several")
    parser.add_argument("--case", required=True, metavar="CASE_ID")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    store = open_store(config, readonly=False)
    for ref in args.clip:
        row = store.find_clip(ref)
        tag_clip(store, row["clip_id"], args.case, pattern=config.custody.case_id_pattern,
                 source="station-cli", by=getpass.getuser())
        print(f"{row['clip_id']}  {row['name']}  -> case {args.case}")
    return 0
