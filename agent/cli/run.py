"""``bwc-agent run``: the daemon, or ``--once`` for the devices docked now."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from agent import __version__, logsetup, preflight
from agent.cli.common import add_config_arg, load_config
from agent.station import Station
from agent.supervise import MainLoop

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the station daemon")
    add_config_arg(parser)
    parser.add_argument("--once", action="store_true",
                        help="offload the devices docked now, seal (and sync) everything, exit")
    parser.add_argument("--platform-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="with --once and a platform: how long to wait for acknowledgements")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    logsetup.configure(config.station.log_format,
                       "debug" if args.verbose else config.station.log_level)
    # Every check before anything is written: no directory, key or database of a station
    # that cannot start (the same checks as `config check`; exit status 2).
    for note in preflight.check(config).notes:
        log.info("%s", note)
    log.info("bwc-agent %s starting for station %s", __version__, config.station.id)
    station = Station(config)
    if args.once:
        station.start(watch=False)
        try:
            summary = station.run_once(platform_timeout_s=args.platform_timeout)
        finally:
            station.stop()
        for report in summary.reports:
            if report.refused_device:
                print(f"{report.serial or report.handle}: refused, nothing read "
                      f"({report.refused_device})")
                continue
            if not report.serial:
                print(f"{report.handle}: nothing read: {'; '.join(report.errors)}")
                continue
            print(f"{report.serial}: {report.recordings} recordings, "
                  f"{len(report.copied)} copied, {report.already_ingested} already ingested, "
                  f"{len(report.duplicates)} duplicates, {len(report.quarantined)} quarantined, "
                  f"{report.skipped_count} skipped" +
                  (f"; errors: {'; '.join(report.errors)}" if report.errors else ""))
        for failure in summary.failures:
            print(f"failed: {failure}", file=sys.stderr)
        return 0 if summary.ok else 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("signal %d: stopping", signum)
        station.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    station.start(watch=True)
    loop = MainLoop(station)
    try:
        loop.ready()  # the store is open, recovery done, every service started
        loop.run(station.stopping)
    finally:
        station.stop()
    return 0
