"""Command line of the development platform (``python -m scripts.devplatform``).

Subcommands:

- ``pki --dir D [--station ST ...]`` — make (or reuse) the dev PKI; print its paths
  as ``name=path`` lines;
- ``enroll --dir D --data-dir X --station ST`` — issue the station's signing
  certificate for its existing key from the dev CA, and its TLS client
  certificate; print both;
- ``broker --dir D --port P [--state-dir S]`` — write a mosquitto.conf for the
  dev PKI and run mosquitto in the foreground (it replaces this process);
- ``serve --dir D --broker-port P [--tus-port T] [--workdir W] [--max-uploads N
  [--retry-after S]]`` — run the platform until SIGTERM/SIGINT; prints
  ``READY tus=<url>`` once up; keeps ``W/verdicts.json`` current; with
  ``--max-uploads`` more uploads at once than N are answered 503 + Retry-After;
- ``command --dir D --broker-port P --station ST NAME [--args JSON]`` — send a
  signed command and print the station's response (exit 1 if ``ok`` is false);
- ``est-token --dir D --station ST --out FILE`` — a one-time EST enrolment token
  for the station, written to FILE (mode 0600), for ``serve``'s EST server.

``serve --est-port E`` also runs the EST server (RFC 7030) on port E and prints
``est=<url>`` on its READY line.

Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from agent.durable import write_atomic
from agent.errors import AgentError
from scripts.devplatform.est import EstServer, add_token
from scripts.devplatform.pki import check_station_id, make_dev_pki, write_mosquitto_conf
from scripts.devplatform.platform import DevPlatform


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.devplatform",
                                     description="The development stand-in for the platform.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)

    pki = sub.add_parser("pki", help="make the development PKI and print its paths")
    pki.add_argument("--dir", required=True, type=Path)
    pki.add_argument("--station", action="append", default=[],
                     help="also issue a TLS client certificate for this station ID")

    enroll = sub.add_parser("enroll", help="issue a station's certificates from the dev CA")
    enroll.add_argument("--dir", required=True, type=Path)
    enroll.add_argument("--data-dir", required=True, type=Path,
                        help="the station's data_dir (holds keys/station.key)")
    enroll.add_argument("--station", required=True)

    broker = sub.add_parser("broker", help="run mosquitto for the dev PKI (foreground)")
    broker.add_argument("--dir", required=True, type=Path)
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, default=8883)
    broker.add_argument("--state-dir", type=Path, help="conf and persistence (default D/broker)")

    for name, text in (("serve", "run the platform until SIGTERM"),
                       ("command", "send a signed command and print the response")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", required=True, type=Path)
        p.add_argument("--broker-host", default="127.0.0.1")
        p.add_argument("--broker-port", type=int, default=8883)
    serve = sub.choices["serve"]
    serve.add_argument("--workdir", type=Path, help="records and uploads (default D/platform)")
    serve.add_argument("--tus-port", type=int, default=8443)
    serve.add_argument("--client-id", default="platform")
    serve.add_argument("--ack-delay", type=float, default=0.0, help="seconds before each ack")
    serve.add_argument("--est-port", type=int, help="also run the EST server on this port")
    serve.add_argument("--max-uploads", type=int,
                       help="load cap: uploads handled at once; more get 503 + Retry-After")
    serve.add_argument("--retry-after", type=int, default=5,
                       help="Retry-After seconds sent with the load cap's 503 (default 5)")
    token = sub.add_parser("est-token", help="write a one-time EST enrolment token")
    token.add_argument("--dir", required=True, type=Path)
    token.add_argument("--station", required=True)
    token.add_argument("--out", required=True, type=Path, help="token file (written 0600)")
    command = sub.choices["command"]
    command.add_argument("--station", required=True)
    command.add_argument("name", help="command name: status, rescan, tag, sync-clock")
    command.add_argument("--args", default="{}", help="command arguments as a JSON object")
    command.add_argument("--expires-in", type=float, default=600)
    command.add_argument("--timeout", type=float, default=10)
    return parser


def _pki(args: argparse.Namespace) -> int:
    pki = make_dev_pki(args.dir)
    paths = {
        "ca": pki.ca_cert_path, "ca_key": pki.ca.key_path,
        "server_cert": pki.server.cert_path, "server_key": pki.server.key_path,
        "platform_client_cert": pki.platform_client.cert_path,
        "platform_client_key": pki.platform_client.key_path,
        "platform_key": pki.platform_key_path, "platform_pub": pki.platform_pub_path,
    }
    for station in args.station:
        issued = pki.station_tls(station)
        paths[f"station_tls_cert.{station}"] = issued.cert_path
        paths[f"station_tls_key.{station}"] = issued.key_path
    for name, path in paths.items():
        print(f"{name}={path}")
    print(f"platform_keyid={pki.platform_keyid}")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    pki = make_dev_pki(args.dir)
    cert = pki.enroll_station(args.data_dir, args.station)
    tls = pki.station_tls(args.station)
    print(f"station_cert={cert}")
    print(f"station_tls_cert={tls.cert_path}")
    print(f"station_tls_key={tls.key_path}")
    print(f"ca={pki.ca_cert_path}")
    print(f"platform_pub={pki.platform_pub_path}")
    return 0


def _broker(args: argparse.Namespace) -> int:
    pki = make_dev_pki(args.dir)
    conf = write_mosquitto_conf(pki, args.state_dir or args.dir / "broker", args.port,
                                args.host)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    print(f"mosquitto conf {conf}", flush=True)
    os.execv(mosquitto, [mosquitto, "-c", str(conf)])
    return 1  # not reached


def _serve(args: argparse.Namespace) -> int:
    pki = make_dev_pki(args.dir)
    platform = DevPlatform(args.workdir or args.dir / "platform", pki, args.broker_host,
                           args.broker_port, tus_port=args.tus_port, client_id=args.client_id,
                           session_expiry_s=86400, max_uploads=args.max_uploads,
                           busy_retry_after=args.retry_after)
    platform.ack_delay_s = args.ack_delay
    est = EstServer(pki, port=args.est_port) if args.est_port is not None else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    platform.start()
    if est is not None:
        est.start()
    try:
        ready = f"READY tus={platform.upload_url}" + (f" est={est.url}" if est else "")
        print(ready, flush=True)  # the line a launcher waits for
        stop.wait()
    finally:
        if est is not None:
            est.stop()
        platform.stop()
    return 0


def _est_token(args: argparse.Namespace) -> int:
    pki = make_dev_pki(args.dir)
    token = add_token(pki.dir, check_station_id(args.station))
    write_atomic(args.out, (token + "\n").encode(), mode=0o600)
    print(f"token_file={args.out}")
    return 0


def _command(args: argparse.Namespace) -> int:
    try:
        command_args = json.loads(args.args)
    except ValueError as exc:
        print(f"--args is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(command_args, dict):
        print("--args must be a JSON object", file=sys.stderr)
        return 2
    pki = make_dev_pki(args.dir)
    with tempfile.TemporaryDirectory(prefix="devplatform-cmd-") as work:
        # Its own client id: the running platform keeps its connection.
        platform = DevPlatform(work, pki, args.broker_host, args.broker_port,
                               client_id=f"platform-cli-{uuid.uuid4().hex[:12]}", intake=False)
        platform.start()
        try:
            response = platform.send_command(args.station, args.name, command_args,
                                             expires_in=args.expires_in,
                                             response_timeout=args.timeout)
        finally:
            platform.stop()
    print(json.dumps(response, indent=2, ensure_ascii=False))
    return 0 if response.get("ok") else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handlers = {"pki": _pki, "enroll": _enroll, "broker": _broker, "serve": _serve,
                "command": _command, "est-token": _est_token}
    try:
        return handlers[args.cmd](args)
    except AgentError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        if args.verbose:
            raise
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
