"""``bwc-agent keys init``: create the station signing key and a development certificate."""

from __future__ import annotations

import argparse

from agent.cli.common import add_config_arg, load_config
from agent.custody.keys import init_station_keys, keyid_of, load_certificate
from agent.errors import ConfigError


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
    try:
        key_path, cert_path = init_station_keys(config.data_dir, config.station.id,
                                                force=args.force)
    except OSError as exc:
        # The configured data directory is where the station's identity lives: one it
        # cannot write (read-only mount, wrong owner) is for the installer to fix.
        where = exc.filename or config.data_dir
        raise ConfigError(
            f"station.data_dir: cannot write {where}: {exc.strerror or exc}; the data "
            f"directory {config.data_dir} must be writable by the user running bwc-agent "
            f"(mount it read-write or fix its owner, or set station.data_dir in "
            f"{args.config} to a writable directory)") from exc
    cert = load_certificate(cert_path)
    print(f"station key:  {key_path} (mode 0600)")
    print(f"certificate:  {cert_path}")
    print(f"key id:       {keyid_of(cert.public_key())}")  # type: ignore[arg-type]
    return 0
