"""``bwc-agent enroll``: certificates for the station from the platform CA over EST (RFC 7030)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import add_config_arg, load_config, print_json
from agent.pki.enroll import certificate_facts
from agent.pki.est import Token
from agent.pki.files import KeyFiles
from agent.pki.lifecycle import enroll_station


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "enroll", help="enrol the station with the platform CA (EST)",
        description="Request the station's signing and TLS certificates from the platform CA "
                    "over EST (RFC 7030) with a one-time enrolment token, check them, and "
                    "store them with the CA certificates, all at once.  The daemon must be "
                    "stopped.")
    add_config_arg(parser)
    parser.add_argument("--est-url", metavar="URL",
                        help="EST server, https://host:port[/.well-known/est] "
                             "(default: pki.est_url)")
    parser.add_argument("--token-file", required=True, type=Path, metavar="FILE",
                        help="file (mode 0600) holding the one-time enrolment token")
    parser.add_argument("--auth", choices=("basic", "bearer"),
                        help="how the CA takes the token (default: pki.est_auth)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    scheme = args.auth or config.pki.est_auth
    token = Token.from_file(args.token_file, scheme,
                            config.pki.est_username or config.station.id, "--token-file")
    result = enroll_station(config, token, est_url=args.est_url)
    files = KeyFiles.of(config.data_dir)
    enrolment = result.enrolment
    platform = config.platform
    tls_configured = platform is not None and (platform.cert_file, platform.key_file) == (
        files.tls_cert, files.tls_key)
    if args.json:
        print_json({"station_certificate": certificate_facts(enrolment.station.cert),
                    "tls_certificate": certificate_facts(enrolment.tls.cert),
                    "files": {"station_key": str(files.station_key),
                              "station_cert": str(files.station_cert),
                              "tls_key": str(files.tls_key), "tls_cert": str(files.tls_cert),
                              "ca": str(files.ca_bundle)},
                    "new_station_key": enrolment.new_station_key,
                    "recorded": result.recorded, "tls_configured": tls_configured})
        return 0
    station, tls = enrolment.station.cert, enrolment.tls.cert
    print(f"enrolled station {config.station.id}")
    print(f"signing certificate: {files.station_cert} (serial {station.serial_number:x}, "
          f"valid until {station.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, issued by "
          f"{station.issuer.rfc4514_string()})")
    print(f"TLS certificate:     {files.tls_cert} (serial {tls.serial_number:x}, key "
          f"{files.tls_key})")
    print(f"CA certificates:     {files.ca_bundle}")
    if enrolment.new_station_key:
        print(f"station key:         {files.station_key} (new, mode 0600)")
    print(f"the token in {args.token_file} is spent: delete the file")
    if config.pki.est_url is None:
        print("to let the daemon renew the certificates, set in [pki]:\n"
              f'  est_url = "{args.est_url}"')
    if not tls_configured:
        print("to use the enrolled TLS certificate, set in [platform]:\n"
              f'  cert_file = "{files.tls_cert}"\n  key_file = "{files.tls_key}"')
    return 0
