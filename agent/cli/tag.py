"""``bwc-agent tag``: put clips in a case, take them out of one, or correct a case number.

Each change is a ``clip.tagged`` custody log entry and a platform event
(sent later, in order, if the platform is unreachable now); a removal or a
correction refers to the entry it undoes.
"""

from __future__ import annotations

import argparse
import getpass

from agent.cli.common import add_config_arg, load_config, open_store
from agent.errors import ConfigError
from agent.tagging import retag_clip, tag_clip, untag_clip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tag", help="put clips in a case (or take them out, or correct it)")
    add_config_arg(parser)
    parser.add_argument("--clip", required=True, action="append", metavar="ID",
                        help="clip id (or a unique prefix); repeat for several")
    parser.add_argument("--case", metavar="CASE_ID", help="the case to put the clips in")
    parser.add_argument("--remove", metavar="CASE_ID", help="take the clips out of this case")
    parser.add_argument("--replace", metavar="OLD_CASE_ID",
                        help="with --case: correct this (wrong) case into --case")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if (args.case is None) == (args.remove is None):
        raise ConfigError("give exactly one of --case CASE_ID or --remove CASE_ID")
    if args.replace is not None and args.case is None:
        raise ConfigError("--replace OLD needs --case NEW")
    config = load_config(args)
    store = open_store(config, readonly=False)
    pattern, by = config.custody.case_id_pattern, getpass.getuser()
    rows = [store.find_clip(ref) for ref in args.clip]  # every id checked before any change
    for row in rows:
        clip_id = row["clip_id"]
        if args.remove is not None:
            untag_clip(store, clip_id, args.remove, source="station-cli", by=by)
            print(f"{clip_id}  {row['name']}  removed from case {args.remove}")
        elif args.replace is not None:
            retag_clip(store, clip_id, args.replace, args.case, pattern=pattern,
                       source="station-cli", by=by)
            print(f"{clip_id}  {row['name']}  case {args.replace} -> {args.case}")
        elif tag_clip(store, clip_id, args.case, pattern=pattern, source="station-cli",
                      by=by) is None:
            print(f"{clip_id}  {row['name']}  already in case {args.case}")
        else:
            print(f"{clip_id}  {row['name']}  -> case {args.case}")
    return 0
