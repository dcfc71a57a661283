"""``bwc-agent export``: write an evidence bundle (BagIt) of sealed clips for auditors."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.cli.common import add_config_arg, human_size, load_config, open_store, print_json
from agent.errors import StoreError
from agent.export import export_bundle, select_clips
from agent.vault import Vault


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "export", help="write an evidence bundle of sealed clips",
        description="Write a BagIt bundle holding the clips, their signed manifests, their "
                    "custody log entries with proofs to a signed checkpoint, and the station "
                    "certificate; verify it with `bwc-agent verify DIR` or by hand "
                    "(DIR/README.txt).")
    add_config_arg(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--clip", action="extend", nargs="+", metavar="ID", default=[],
                       help="clip id or unique prefix (several allowed)")
    which.add_argument("--case", metavar="CASE_ID", help="every clip tagged with this case")
    which.add_argument("--all", action="store_true", help="every sealed clip")
    parser.add_argument("--out", required=True, metavar="DIR", type=Path,
                        help="new (or empty) directory to create the bundle in")
    parser.add_argument("--skip-unsealed", action="store_true",
                        help="with --case or --all: leave out clips that cannot be exported "
                             "(not sealed, or purged) instead of failing")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.set_defaults(handler=run)


class _Progress:
    """Bytes copied / total on a terminal, at most a few times a second."""

    def __init__(self) -> None:
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.25 and done < total:
            return
        self.last = now
        percent = 100 * done // total if total else 100
        sys.stderr.write(f"\rexport: {human_size(done)} / {human_size(total)} ({percent}%)  ")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if not (config.data_dir / "state.db").exists():
        raise StoreError(f"no station database at {config.data_dir / 'state.db'}: "
                         "has the agent run yet?")
    # Writable: a checkpoint is signed if none covers the clips' entries yet.
    store = open_store(config, readonly=False)
    try:
        clips = select_clips(store, clip_refs=args.clip, case_id=args.case,
                             all_clips=args.all, skip_unexportable=args.skip_unsealed)
        progress = _Progress() if sys.stderr.isatty() else None
        try:
            result = export_bundle(config, store, Vault(config.data_dir / "vault"), clips,
                                   args.out, progress=progress)
        finally:
            if progress is not None:
                progress.end()
    finally:
        store.close()
    if args.json:
        print_json(result.as_dict())
        return 0
    print(f"exported {len(result.clip_ids)} clip(s) ({human_size(result.payload_bytes)}), "
          f"{result.entries} log entries proven against checkpoint {result.checkpoint_size}, "
          f"to {result.path}")
    print(f"verify with: bwc-agent verify {result.path}   (or by hand: {result.path}/README.txt)")
    return 0
