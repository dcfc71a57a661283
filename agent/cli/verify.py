"""``bwc-agent verify``: verify bundles, data directories, or a clip and its manifest, offline.

Exit 0 only if everything verifies; 1 if anything does not; 2 if the
arguments cannot be understood.  Every failure is listed, never only the first.
"""

from __future__ import annotations

import argparse

from agent.cli.common import human_size, print_json
from agent.verify import verify_paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "verify", help="verify clips, manifests, bundles or a station data directory",
        description="PATH is an export bundle, a station data directory (holding state.db), "
                    "or a clip file followed by its manifest (needs --cert).")
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--cert", metavar="PEM",
                        help="station certificate, for a clip file and its manifest")
    parser.add_argument("--trust", metavar="CA.pem",
                        help="platform CA certificate(s) the station certificate must chain to")
    parser.add_argument("--officer-key", metavar="PEM",
                        help="the platform's credential key that officer credentials and "
                             "rosters must be signed with")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = verify_paths(args.paths, cert=args.cert, trust=args.trust,
                          officer_key=args.officer_key)
    if args.json:
        print_json(report.as_dict())
    else:
        print(report.render())
        hashed = report.stats.get("bytes_hashed", 0)
        seconds = report.stats.get("hash_seconds", 0)
        if hashed and seconds > 0:
            print(f"hashed {human_size(int(hashed))} in {seconds:.2f} s "
                  f"({human_size(int(hashed / seconds))}/s)")
    return 0 if report.ok else 1
