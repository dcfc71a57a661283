"""``bwc-agent status``: devices, clips by state, backlog, disk, sync."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_config_arg, human_size, load_config, open_store, print_json
from agent.config import Config
from agent.daemonstate import describe, describe_broker
from agent.officers.status import status_lines
from agent.overview import station_status
from agent.pki.status import certificate_summary
from agent.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="station status")
    add_config_arg(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def collect(config: Config, store: Store) -> dict[str, Any]:
    """The same figures the station's pages and its MQTT status show (agent.overview)."""
    return station_status(config, store)


CHARGING_WORDS = {"charging": "charging", "full": "charged", "not_charging": "NOT CHARGING"}


def battery_text(device: dict[str, Any]) -> str:
    """``  battery 87 % charging, 1920x1080@30 (at ...)``, or "" if never reported."""
    parts = []
    if device["battery_percent"] is not None:
        parts.append(f"battery {device['battery_percent']} %")
    if device["charging"] is not None:
        parts.append(CHARGING_WORDS.get(device["charging"], device["charging"]))
    text = " ".join(parts)
    resolution = device["resolution"]
    if resolution:
        text += (", " if text else "") + (f"{resolution['width']}x{resolution['height']}"
                                          f"@{resolution['fps']}")
    return f"  {text} (at {device['health_at']})" if text else ""


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    store = open_store(config)
    info = collect(config, store)
    if args.json:
        print_json(info)
        return 0
    print(f"station {info['station_id']}  data: {info['data_dir']}")
    print(f"agent: {describe(info['daemon'])}")
    print(f"bwc-agent {info['version']}; store schema {info['store']['schema']}, last written "
          f"by bwc-agent {info['store']['agent_version'] or 'unknown'}")
    print(f"disk free: {human_size(info['disk']['free_bytes'])} of "
          f"{human_size(info['disk']['total_bytes'])}")
    print("devices:")
    for d in info["devices"] or []:
        where = ("DOCKED" if d["docked"] else
                 f"last docked when the agent stopped (last seen {d['last_seen']})"
                 if d.get("docked_when_stopped") else f"last seen {d['last_seen']}")
        print(f"  {d['serial']:<12} {d['model']:<20} officer {d['officer_id'] or '-':<8} "
              f"{where}" + battery_text(d))
    if not info["devices"]:
        print("  (none seen yet)")
    if info["refused"]:
        print("refused devices (latest first):")
        for r in info["refused"]:
            print(f"  {r['at']}  USB {r['usb_id'] or '-'} serial {r['serial'] or '-'} "
                  f"port {r['port'] or '-'}: {r['reason']}")
    print("clips: " + (", ".join(f"{k} {v}" for k, v in info["clips"].items() if v) or "none"))
    oldest = info["backlog_oldest"]
    print(f"backlog: {info['backlog']}" + (
        f" (oldest waiting since {oldest['since']}, clip {oldest['clip_id']})" if oldest else ""))
    for f in info["releases_failing"]:
        print(f"releases failing: {f['clips']} clips on {f['serial']} stay on the camera: "
              f"{f['reason']} (next try {f['next_attempt_at']}, and at the next dock)")
    cp = info["log"]["checkpoint"]
    print(f"custody log: {info['log']['size']} entries; last checkpoint: "
          f"{cp['size']} at {cp['at']}" if cp else
          f"custody log: {info['log']['size']} entries; no checkpoint yet")
    sync = info["sync"]
    if sync["platform"]:
        refused = (f" ({sync['outbox_refused']} refused by the broker: bwc-agent outbox list)"
                   if sync["outbox_refused"] else "")
        print(f"sync: {sync['outbox_pending']} events pending{refused}; last ack "
              f"{sync['last_ack'] or 'never'}")
        if info["daemon"]["running"]:
            print(f"broker: {describe_broker(sync['broker'])}")
    else:
        print("sync: no platform configured (local only)")
    active = info["alerts"]["active"]
    print(f"alerts (last {info['alerts']['window_s'] // 3600} h): " + ("none" if not active else
          f"{len(active)} codes"))
    for a in active:
        print(f"  {a['code']:<24} {a['count']:>5}x, last {a['last_at']}: {a['message']}")
    for line in status_lines(info["officers"]):
        print(line)
    print(certificate_summary(info["certificate"]))
    return 0
