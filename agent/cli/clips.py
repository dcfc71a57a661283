"""``bwc-agent clips``: list clips with their hashes, media, state and flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.cli.common import add_config_arg, human_size, load_config, open_store, print_json, table
from agent.errors import ConfigError
from agent.store import STATES
from agent.tagging import cases_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("clips", help="list clips")
    add_config_arg(parser)
    parser.add_argument("--state", metavar="S", help=f"only clips in state S ({', '.join(STATES)})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def clip_record(row: Any) -> dict[str, Any]:
    return {
        "clip_id": row["clip_id"], "device_serial": row["device_serial"], "path": row["path"],
        "name": row["name"], "size": row["size"], "sha256": row["sha256"],
        "state": row["state"], "reason": row["reason"], "flags": json.loads(row["flags"]),
        "media": json.loads(row["media"]) if row["media"] else None,
        "recorded_start": row["recorded_start"], "important": bool(row["important"]),
        "officer_id": row["officer_id"] or None, "case_id": row["case_id"],
        "officer_status": row["officer_status"], "credential_id": row["credential_id"],
        "start_at": row["start_at"], "end_at": row["end_at"],
        "copied_at": row["copied_at"], "sealed_at": row["sealed_at"],
        "uploaded_at": row["uploaded_at"], "acknowledged_at": row["acknowledged_at"],
        "released_at": row["released_at"], "purged_at": row["purged_at"],
        "release_error": row["release_error"],
    }


def media_summary(media: dict[str, Any] | None) -> str:
    if not media:
        return "-"
    kind = media.get("kind", "video" if media.get("width") else "audio")
    text = f"{media.get('container', '?')} {media.get('codec') or '-'}"
    if kind in ("video", "photo"):
        text += f" {media.get('width')}x{media.get('height')}"
    if kind == "video":
        text += f" {media.get('fps', 0):g}fps"
    if kind in ("video", "audio"):
        text += f" {media.get('duration_s', 0):.1f}s"
    verdict = media.get("verdict", "ok" if media.get("decodable") else "undecodable")
    return text if verdict == "ok" else f"{text} {verdict.upper()}"


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.state and args.state not in STATES:
        raise ConfigError(f"--state: {args.state!r} is not a clip state ({', '.join(STATES)})")
    store = open_store(config)
    records = [clip_record(r) for r in store.clips(args.state)]
    for record in records:
        record["cases"] = list(cases_of(store, record["clip_id"]))
    if args.json:
        print_json({"clips": records})
        return 0
    rows = [
        [r["clip_id"], r["name"], human_size(r["size"]),
         r["sha256"] or "-", media_summary(r["media"]),
         r["state"] + (f" ({r['reason']})" if r["reason"] else "")
         + (f" (release failed: {r['release_error']})" if r["release_error"] else ""),
         f"{r['officer_id'] or '-'} {r['officer_status'] or '-'}",
         ", ".join(r["cases"]) or "-", ",".join(r["flags"]) or "-"]
        for r in records
    ]
    print(table(["CLIP", "NAME", "SIZE", "SHA-256", "MEDIA", "STATE", "OFFICER", "CASES",
                 "FLAGS"], rows))
    print(f"{len(records)} clips; vault: {config.data_dir / 'vault'}")
    return 0
