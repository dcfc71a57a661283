"""``bwc-agent config``: check a configuration the way ``run`` does; show the shipped files."""

from __future__ import annotations

import argparse
import sys

from agent import config as config_mod
from agent import packaged, preflight
from agent.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="configuration tools")
    inner = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = inner.add_parser(
        "check", help="check a configuration and everything it names, as `run` does at start "
                      "(exit 2 on any problem)")
    check.add_argument("--config", "-c", required=True, metavar="FILE")
    check.set_defaults(handler=run_check)
    show = inner.add_parser(
        "show", help="print a file shipped with bwc-agent (example configuration, device "
                     "catalog, systemd unit); without NAME, list them")
    show.add_argument("name", nargs="?", metavar="NAME")
    show.add_argument("--path", action="store_true",
                      help="print where the installed file is instead of its contents")
    show.set_defaults(handler=run_show)


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 if ``run`` would start; otherwise print every problem and exit 2."""
    try:
        cfg = config_mod.load(args.config)
        report = preflight.check(cfg)
    except ConfigError as exc:
        print(exc.diagnostics())
        return 2
    drivers = ", ".join(sorted(cfg.devices)) or "none"
    platform = "configured" if cfg.platform else "none (local only)"
    print(f"{args.config}: OK (station {cfg.station.id}, drivers: {drivers}, platform: {platform})")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    if args.name is None:
        for name in packaged.names():
            print(packaged.path(name) if args.path else name)
        return 0
    if args.path:
        print(packaged.path(args.name))
        return 0
    sys.stdout.flush()
    sys.stdout.buffer.write(packaged.read_bytes(args.name))
    sys.stdout.buffer.flush()
    return 0
