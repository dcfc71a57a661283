"""Entry point: parse arguments, dispatch to a subcommand, print AgentError diagnostics once.

Exit codes (stable, documented in docs/OPERATIONS.md):
0 success; 1 something failed or did not verify; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from agent import __version__
from agent.cli import (
    clips,
    config_cmd,
    doctor,
    enroll,
    export,
    keys,
    mount,
    officers,
    outbox,
    requeue,
    run,
    status,
    tag,
    verify,
    web,
)
from agent.errors import AgentError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

COMMANDS = (run, status, clips, tag, officers, outbox, requeue, keys, enroll, config_cmd, doctor,
            export, verify, web, mount)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bwc-agent",
        description="Edge agent for body-worn camera docking stations.")
    parser.add_argument("--version", action="version", version=f"bwc-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging; show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as exc:
        _print_error(exc, args.verbose)
        return EXIT_USAGE
    except AgentError as exc:
        _print_error(exc, args.verbose)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of the agent.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def _print_error(exc: AgentError, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    print(f"bwc-agent: error: {exc.diagnostics()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
