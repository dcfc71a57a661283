"""``bwc-agent keys init``: create the station signing key and a development certificate."""

from __future__ import annotations

import argparse

from agent.cli.common import add_config_arg, load_config
from agent.custody.keys import init_station_keys, keyid_of, load_certificate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="station identity")
    inner = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = inner.add_parser("init", help="create the station key and a development certificate")
    add_config_arg(init)
    init.add_argument("--force", action="store_true",
                      help="replace an existing key (the old one can no longer sign)")
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    config = load_config(args)
    key_path, cert_path = init_station_keys(config.data_dir, config.station.id, force=args.force)
    cert = load_certificate(cert_path)
    print(f"station key:  {key_path} (mode 0600)")
    print(f"certificate:  {cert_path}")
    print(f"key id:       {keyid_of(cert.public_key())}")  # type: ignore[arg-type]
    return 0
