"""``bwc-agent config check``: validate a configuration, listing every problem by key path."""

from __future__ import annotations

import argparse

from agent import config as config_mod


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="configuration tools")
    inner = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = inner.add_parser("check", help="validate a configuration file")
    check.add_argument("--config", "-c", required=True, metavar="FILE")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError

    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(exc.diagnostics())
        return 1
    drivers = ", ".join(sorted(cfg.devices)) or "none"
    platform = "configured" if cfg.platform else "none (local only)"
    print(f"{args.config}: OK (station {cfg.station.id}, drivers: {drivers}, platform: {platform})")
    return 0
