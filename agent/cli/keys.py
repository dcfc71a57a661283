"""``bwc-agent keys``: create the station signing key (``init``) or replace it (``rotate``)."""

from __future__ import annotations

import argparse

from agent.cli.common import add_config_arg, load_config, print_json
from agent.custody.keys import init_station_keys, keyid_of, load_certificate
from agent.errors import ConfigError
from agent.pki.identity import check_may_replace_key
from agent.pki.rotation import rotate_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="station identity")
    inner = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = inner.add_parser("init", help="create the station key and a development certificate")
    add_config_arg(init)
    init.add_argument("--force", action="store_true",
                      help="replace an existing key, only while nothing was signed with it")
    init.set_defaults(handler=run_init)
    rotate = inner.add_parser(
        "rotate", help="replace the station key, keeping the past verifiable",
        description="Make a new station signing key, record a rotation statement signed by "
                    "the old and the new key in the custody log, enrol the new key (over EST "
                    "when pki.est_url is set) and archive the old one.  The daemon must be "
                    "stopped.")
    add_config_arg(rotate)
    rotate.add_argument("--reason", required=True,
                        help="why the key is replaced (part of the signed statement)")
    rotate.add_argument("--json", action="store_true", help="machine-readable output")
    rotate.set_defaults(handler=run_rotate)


def run_init(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.force:
        check_may_replace_key(config)
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


def run_rotate(args: argparse.Namespace) -> int:
    config = load_config(args)
    rotation = rotate_key(config, reason=args.reason)
    if args.json:
        print_json({"old_keyid": rotation.old_keyid, "new_keyid": rotation.new_keyid,
                    "log_seq": rotation.seq, "certificate_via": rotation.via,
                    "certificate_serial": f"{rotation.certificate.serial_number:x}"})
        return 0
    print(f"station key rotated: {rotation.old_keyid}")
    print(f"                  -> {rotation.new_keyid}")
    print(f"rotation statement:  custody log entry {rotation.seq}, signed by both keys")
    issuer = ("the platform CA (EST)" if rotation.via == "est"
              else "itself (a development certificate)")
    print(f"new certificate:     issued by {issuer}, serial "
          f"{rotation.certificate.serial_number:x}")
    print(f"old key archived:    {config.data_dir / 'keys' / 'archive' / rotation.old_keyid}.key")
    return 0
