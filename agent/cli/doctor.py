"""``bwc-agent doctor``: every check a support call starts with, one line each."""

from __future__ import annotations

import argparse

from agent import doctor
from agent.cli.common import add_config_arg, load_config, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor", help="check everything a support call starts with",
        description="Checks the configuration, files and their modes, data directory, disk, "
                    "clock, certificate, platform key, camera mounts, the store's integrity, "
                    "the custody log since its last checkpoint, and the broker and upload "
                    "server over TLS.  One line each: OK, WARN or FAIL with what to do.  "
                    "Exit 0 (no FAIL), 1 (a FAIL), 2 (the configuration is wrong).")
    add_config_arg(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--offline", action="store_true",
                        help="skip the broker and upload server checks")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="overall deadline per server (default 10)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    report = doctor.run(config, doctor.Environment(deadline_s=args.timeout),
                        network=not args.offline)
    if args.json:
        print_json(report.as_dict())
    else:
        for finding in report.findings:
            print(finding.line())
        counts = report.as_dict()["counts"]
        print(f"{counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    return report.exit_code
