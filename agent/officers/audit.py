"""Verify the officers and cases of an export bundle, offline (docs/AUDIT.md section 7).

For each clip of the bundle:

- the officer: the credential its manifest names (or a later
  ``officer.verified`` entry names) is checked like the station checked it —
  its signature with the credential key, the roster version the station
  held (rebuilt from the signed roster messages in the bundle) listing it
  with the same digest and not revoking it, its validity window at the
  corrected recording time — and once more against the newest roster in the
  bundle (a revocation made later is reported, not failed);
- the cases: the clip's ``clip.tagged`` entries replayed in order (a removal
  or correction must refer to an earlier entry of the clip that holds the
  case); tags from case windows checked against the signed window; the
  bundle's case index against the replay.

A manifest that says its officer is verified when the bundle does not bear
that out fails the clip (``officer-credential``); an unverified officer is
reported, never failed: evidence is never refused, it is flagged.  Inputs
are untrusted: every file is read bounded, parse errors become findings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import boundedjson
from agent.custody import dsse
from agent.custody.keys import keyid_of, load_public_key, public_key_from_pem
from agent.errors import AgentError
from agent.officers.credentials import Credential, Outcome, judge, parse_credential
from agent.officers.layout import (
    CASES_DIR,
    CREDENTIAL_KEY,
    CREDENTIALS_DIR,
    PLATFORM_KEY,
    ROSTERS,
    WINDOWS,
    current_cases,
)
from agent.officers.roster import RosterMessage, RosterState, parse_message, state_at
from agent.officers.times import overlaps
from agent.officers.windows import CaseWindow, parse_window
from agent.timeutil import parse_rfc3339
from agent.verify import layout
from agent.verify.files import Unreadable, read_beneath
from agent.verify.report import Report

MAX_FILE = 64 * 1024 * 1024
Keys = dict[str, dsse.PublicKey]


def verify_officers(root: Path, report: Report, source: str, entries: Sequence[dict[str, Any]],
                    officer_key: Path | None = None) -> None:
    """Add each clip's officer and cases to ``report`` (and every problem found)."""
    _Audit(root, report, source, entries, officer_key).run()


class _Audit:
    def __init__(self, root: Path, report: Report, source: str,
                 entries: Sequence[dict[str, Any]], officer_key: Path | None) -> None:
        self.root, self.report, self.source = root, report, source
        self.entries = list(entries)
        self.officer_key = officer_key
        self.keys: Keys = {}
        self.platform_keys: Keys = {}
        self.rosters: list[RosterMessage] = []
        self.credentials: dict[str, Credential] = {}
        self.windows: dict[tuple[str, int], CaseWindow] = {}

    def problem(self, text: str, clip_id: str | None = None) -> None:
        if clip_id is None:
            self.report.problem(text)
        else:
            self.report.clip(clip_id, self.source).add(text)

    def run(self) -> None:
        self.load_keys()
        self.load_rosters()
        self.load_credentials()
        self.load_windows()
        clip_ids = sorted({r.clip_id for r in self.report.clips if r.source == self.source})
        for clip_id in clip_ids:
            self.check_clip(clip_id)
        self.check_case_index()

    # --- reading --------------------------------------------------------------------------

    def read(self, rel: str) -> bytes | None:
        """A regular file of the bundle, read without following links (agent.verify.files)."""
        if not os.path.lexists(self.root / rel):
            return None
        try:
            return read_beneath(self.root, rel, MAX_FILE)
        except Unreadable as exc:
            self.problem(f"bag-format: {exc}")
            return None

    def load_keys(self) -> None:
        given = None
        if self.officer_key is not None:
            key = load_public_key(self.officer_key)
            given = keyid_of(key)
            self.keys = {given: key}
        # The bytes read once, as a regular file (not a link or a FIFO), are the key checked:
        # the name is never opened again, so nothing swapped in after the check is used.
        raw = self.read(CREDENTIAL_KEY)
        if raw is not None:
            try:
                bundled = public_key_from_pem(raw, CREDENTIAL_KEY)
            except AgentError as exc:
                self.problem(f"officer-key: {exc}")
                return
            keyid = keyid_of(bundled)
            if given is not None and keyid != given:
                self.problem(f"officer-key: {CREDENTIAL_KEY} has key id {keyid}, not the "
                             f"credential key given with --officer-key ({given})")
            elif given is None:
                self.keys = {keyid: bundled}
                self.report.warning(f"{self.source}: the credential key {CREDENTIAL_KEY} is not "
                                    f"anchored (no --officer-key given); its key id is {keyid}: "
                                    "compare it with the platform's record")
        raw = self.read(PLATFORM_KEY)
        if raw is not None:
            try:
                platform = public_key_from_pem(raw, PLATFORM_KEY)
                self.platform_keys = {keyid_of(platform): platform}
            except AgentError as exc:
                self.problem(f"case-window: {exc}")

    def load_rosters(self) -> None:
        raw = self.read(ROSTERS)
        if raw is None:
            return
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{ROSTERS} line {number}"
            try:
                item = _json(line)
                if not isinstance(item, dict) or item.get("kind") not in ("snapshot", "update"):
                    raise ValueError("not {kind, version, message}")
                message = parse_message(item.get("message"), item["kind"], self.keys)
                if message.version != item.get("version"):
                    raise ValueError(f"says version {item.get('version')}, its signed "
                                     f"payload {message.version}")
            except (ValueError, AgentError) as exc:
                self.problem(f"officer-roster: {where}: {exc}")
                continue
            self.rosters.append(message)

    def load_credentials(self) -> None:
        directory = self.root / CREDENTIALS_DIR
        if not directory.is_dir() or directory.is_symlink():
            return
        for path in sorted(directory.iterdir()):
            rel = f"{CREDENTIALS_DIR}/{path.name}"
            raw = self.read(rel)
            if raw is None:
                continue
            try:
                credential = parse_credential(_json(raw))
            except (ValueError, AgentError) as exc:
                self.problem(f"officer-credential: {rel}: {exc}")
                continue
            self.credentials[credential.credential_id] = credential

    def load_windows(self) -> None:
        raw = self.read(WINDOWS)
        if raw is None:
            return
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                window = parse_window(_json(line), self.platform_keys, None)
            except (ValueError, AgentError) as exc:
                self.problem(f"case-window: {WINDOWS} line {number}: {exc}")
                continue
            self.windows[(window.window_id, window.revision)] = window

    def manifest(self, clip_id: str) -> dict[str, Any] | None:
        raw = self.read(layout.manifest_path(clip_id))
        try:
            envelope = _json(raw) if raw else None
            payload = envelope.get("payload") if isinstance(envelope, dict) else None
            value = _json(dsse.b64decode(payload)) if isinstance(payload, str) else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # --- one clip -------------------------------------------------------------------------

    def check_clip(self, clip_id: str) -> None:
        result = self.report.clip(clip_id, self.source)
        manifest = self.manifest(clip_id)
        entries = [e for e in self.entries if e["clip_id"] == clip_id]
        officer = manifest.get("officer") if manifest else None
        if isinstance(officer, dict):
            result.officer = self.officer_verdict(clip_id, manifest or {}, officer, entries)
        result.cases = self.cases(clip_id, manifest or {}, entries)

    def officer_verdict(self, clip_id: str, manifest: Mapping[str, Any],
                        officer: Mapping[str, Any], entries: list[dict[str, Any]]
                        ) -> dict[str, Any]:
        claimed = bool(officer.get("verified"))
        station_status = officer.get("status") or ("valid" if claimed else "unverified")
        cid, version = officer.get("credential_id"), officer.get("roster_version")
        later = [e for e in entries if e["kind"] == "officer.verified"]
        if later and not claimed:
            body = later[-1]["body"]
            cid, version, claimed = body.get("credential_id"), body.get("roster_version"), True
            station_status = f"valid (verified later, log entry {later[-1]['seq']})"
        verdict: dict[str, Any] = {
            "id": officer.get("id"), "name": officer.get("name"), "credential_id": cid,
            "roster_version": version, "station_status": station_status, "status": None,
            "revoked_since": None}
        if not isinstance(cid, str):
            verdict["status"] = station_status
            if claimed:
                self.problem("officer-credential: the manifest says the officer is verified "
                             "but names no credential", clip_id)
            return verdict
        status = self.judge(clip_id, manifest, officer, cid, version)
        verdict["status"] = status
        if cid in self.credentials:  # the platform's word on the name over the camera's
            verdict["name"] = self.credentials[cid].name
        if claimed and status != Outcome.VALID.value:
            self.problem(f"officer-credential: the station recorded officer {officer.get('id')} "
                         f"as verified with credential {cid}, but the bundle shows: {status}",
                         clip_id)
        newest = self.newest_state()
        entry = newest.entries.get(cid) if newest is not None else None
        if entry is not None and entry.revocation is not None and status != "revoked":
            verdict["revoked_since"] = {"roster_version": newest.version if newest else None,
                                        "revoked_at": entry.revocation.revoked_at,
                                        "reason": entry.revocation.reason}
            self.report.warning(f"{clip_id}: credential {cid} was revoked later (roster "
                                f"version {verdict['revoked_since']['roster_version']}, "
                                f"{entry.revocation.revoked_at}); it was valid when sealed")
        return verdict

    def judge(self, clip_id: str, manifest: Mapping[str, Any], officer: Mapping[str, Any],
              cid: str, version: Any) -> str:
        credential = self.credentials.get(cid)
        if credential is None:
            return "credential not in the bundle"
        if credential.officer_id != officer.get("id"):
            return f"credential is for officer {credential.officer_id}"
        if not isinstance(version, int):
            return "no roster version named"
        state = state_at(self.rosters, version)
        if state is None:
            return f"roster version {version} is not in the bundle"
        entry = state.entries.get(cid)
        if entry is None or (entry.sha256 is not None
                             and entry.sha256 != credential.payload_sha256):
            return f"roster version {version} does not list this credential"
        device = _obj(manifest.get("device"))
        return judge(credential, keys=self.keys, at=_recorded_at(manifest),
                     serial=str(device.get("serial", "")) if credential.cameras else None,
                     revocation=entry.revocation).value

    def newest_state(self) -> RosterState | None:
        if not self.rosters:
            return None
        return state_at(self.rosters, max(m.version for m in self.rosters))

    def cases(self, clip_id: str, manifest: Mapping[str, Any],
              entries: list[dict[str, Any]]) -> list[str]:
        seen: dict[int, dict[str, Any]] = {}
        for entry in entries:
            if entry["kind"] != "clip.tagged" or not isinstance(entry["body"], dict):
                continue
            body, seq = entry["body"], entry["seq"]
            refers = body.get("refers_to")
            if body.get("action") in ("remove", "correct"):
                earlier = seen.get(refers) if isinstance(refers, int) else None
                wanted = body.get("case_id" if body["action"] == "remove" else "previous_case_id")
                if earlier is None or earlier.get("case_id") != wanted:
                    self.problem(f"log-tag: seq {seq} {body['action']}s case {wanted!r} "
                                 f"referring to seq {refers}, which is not an earlier tag of "
                                 "this clip with that case", clip_id)
            if body.get("source") == "case-window":
                self.check_window_tag(clip_id, manifest, seq, body)
            seen[seq] = body
        return sorted(case for case, clips in current_cases(entries).items()
                      if clip_id in clips)

    def check_window_tag(self, clip_id: str, manifest: Mapping[str, Any], seq: int,
                         body: Mapping[str, Any]) -> None:
        key = (str(body.get("window_id")), int(body.get("window_revision") or 1))
        window = self.windows.get(key)
        if window is None:
            self.report.warning(f"{clip_id}: tag seq {seq} came from case window {key[0]} "
                                f"revision {key[1]}, which the bundle does not hold")
            return
        recorded, officer = _obj(manifest.get("recorded")), _obj(manifest.get("officer"))
        action = body.get("action")
        if action in ("add", "correct") and body.get("case_id") != window.case_id:
            self.problem(f"case-window: seq {seq} tags case {body.get('case_id')!r}, window "
                         f"{window.window_id} revision {window.revision} says "
                         f"{window.case_id!r}", clip_id)
        if action in ("add", "correct") and (
                officer.get("id") != window.officer_id
                or not overlaps(recorded.get("start"), recorded.get("end"), window.start,
                                window.end)):
            self.problem(f"case-window: seq {seq}: the clip (officer {officer.get('id')}, "
                         f"recorded {recorded.get('start')}) is not in window "
                         f"{window.window_id} (officer {window.officer_id})", clip_id)

    def check_case_index(self) -> None:
        directory = self.root / CASES_DIR
        if not directory.is_dir() or directory.is_symlink():
            return
        replay = current_cases(self.entries)
        for path in sorted(directory.iterdir()):
            rel = f"{CASES_DIR}/{path.name}"
            raw = self.read(rel)
            try:
                index = _obj(_json(raw) if raw is not None else None)
                case_id = index["case_id"]
                listed = {c["clip_id"]: c["tag_seqs"] for c in index["clips"]}
            except (ValueError, KeyError, TypeError):
                self.problem(f"case-index: {rel} is not a case index")
                continue
            if listed != replay.get(case_id, {}):
                self.problem(f"case-index: {rel} lists {sorted(listed)} in case {case_id!r}; "
                             f"the signed log entries put {sorted(replay.get(case_id, {}))} "
                             "there")


def _json(data: bytes) -> Any:
    """Bounded JSON (agent.boundedjson): a hostile file raises ValueError, nothing else."""
    return boundedjson.loads(data, max_bytes=MAX_FILE, max_depth=32)


def _recorded_at(manifest: Mapping[str, Any]) -> datetime:
    recorded, ingest = _obj(manifest.get("recorded")), _obj(manifest.get("ingest"))
    for text in (recorded.get("start"), recorded.get("end"), ingest.get("docked_at")):
        if isinstance(text, str):
            try:
                return parse_rfc3339(text)
            except ValueError:
                continue
    return datetime.min.replace(tzinfo=UTC)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
