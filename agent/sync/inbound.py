"""Messages from the platform: signed acknowledgements and signed commands.

Trust rules (docs/PROTOCOL.md §5, §6):

* an ack moves a clip to ``acknowledged`` only if its DSSE signature verifies
  with the configured platform key, it names this station, and its sha256
  equals the clip's sealed digest; anything else is refused, logged and
  reported — the clip stays where it was, so nothing is released;
* a command runs only if it is signed by the platform key, names this
  station and its topic, is within its validity window, and its id was never
  seen before (ids are remembered in the store until a day after they expire;
  a broker's resend of an accepted command gets its first answer again).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import Config
from agent.custody import dsse
from agent.errors import AgentError, IntegrityError
from agent.store import ClipState, Store
from agent.sync.mqtt import InboundMessage
from agent.tagging import TagError, check_case_id, retag_clip, tag_clip, untag_clip
from agent.timeutil import now, parse_rfc3339, rfc3339

log = logging.getLogger(__name__)
S = ClipState
CLOCK_SKEW = timedelta(seconds=60)
SEEN_COMMANDS_MARGIN = timedelta(days=1)

Responder = Callable[[str, bytes | None, bytes], None]
CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


class Refused(AgentError):
    """A platform message that fails a trust rule; the text says which."""


class _Redelivered(Exception):
    """The broker sent an accepted command again: answer as the first time, run nothing."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__("redelivered")
        self.response = response


class Inbound:
    """Processes platform messages on its own thread (paho's thread only enqueues)."""

    def __init__(self, config: Config, store: Store, trusted: dict[str, Any],
                 respond: Responder, commands: dict[str, CommandHandler],
                 on_acknowledged: Callable[[str], None],
                 settle: Callable[[InboundMessage], None] | None = None,
                 messages: dict[str, Callable[[bytes], None]] | None = None) -> None:
        self.config = config
        self.store = store
        self.trusted = trusted
        self.respond = respond
        self.commands = commands
        self.on_acknowledged = on_acknowledged
        self.settle = settle  # tells the broker the message was handled
        # Other platform messages by name (officer roster, case windows), handled like acks.
        self.messages = dict(messages or {})
        self.queue: queue.Queue[InboundMessage | None] = queue.Queue()
        self._stopping = threading.Event()
        self.reply_prefix = f"bwc/v1/stations/{config.station.id}/reply/"
        self._thread = threading.Thread(target=self._run, name="inbound", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.queue.put(None)
        self._thread.join(timeout=10)

    def deliver(self, message: InboundMessage) -> None:
        """Called on paho's network thread: enqueue only."""
        self.queue.put(message)

    def idle(self) -> bool:
        """No message waiting or being processed (its follow-up work already queued)."""
        return self.queue.unfinished_tasks == 0

    def _run(self) -> None:
        while True:
            message = self.queue.get()
            if message is None:
                self.queue.task_done()
                return
            handled = False
            try:
                handled = self._handle_until_done(message)
            finally:
                if handled and self.settle is not None:
                    self.settle(message)
                self.queue.task_done()

    def _handle_until_done(self, message: InboundMessage) -> bool:
        """Handle a message, retrying while the station itself fails (a busy or failing store).

        The broker is told a message was handled (settled) only once it was
        applied or refused: an ack settled on a database error would be lost,
        and its clip never released nor purged.  False: the agent is stopping
        before it could be handled; unsettled, the broker delivers it again
        in the next session.
        """
        handle: Callable[[bytes], object] | None = (
            self.handle_ack if message.name == "ack" else self.messages.get(message.name))
        if handle is None:
            # A command is answered once, whatever happens (its id is taken as seen
            # before it runs, so a second try would be refused as a replay).
            try:
                self.handle_command(message)
            except Exception:
                log.exception("command on %s failed", message.topic)
            return True
        attempt = 0
        while True:
            try:
                handle(message.payload)
                return True
            except AgentError as exc:
                delay = min(30.0, 0.5 * 2 ** attempt)
                attempt += 1
                log.error("platform message on %s could not be handled (%s); trying again "
                          "in %.1f s", message.topic, exc.diagnostics(), delay)
                if self._stopping.wait(delay):
                    return False
            except Exception:
                # A defect, not a passing condition: retrying would block every later message.
                log.exception("platform message on %s failed", message.topic)
                return True

    # --- acknowledgements ----------------------------------------------------------------

    def handle_ack(self, raw: bytes) -> str | None:
        """Apply an acknowledgement; returns the clip id acknowledged, or None if refused."""
        clip_id: str | None = None
        try:
            envelope = _json(raw, "ack")
            payload = json.loads(dsse.verify_envelope(envelope, self.trusted,
                                                      expected_type=dsse.ACK))
            if not isinstance(payload, dict):
                raise Refused("ack payload is not a JSON object")
            clip_id = _text(payload, "clip_id")
            sha256 = _text(payload, "sha256")
            if payload.get("station_id") != self.config.station.id:
                raise Refused(f"ack names station {payload.get('station_id')!r}, "
                              f"not {self.config.station.id!r}")
            with self.store.transaction() as tx:
                row = tx.one("SELECT * FROM clips WHERE clip_id = ?", (clip_id,))
                if row is None:
                    raise Refused(f"ack for unknown clip {clip_id}")
                manifest_sha = _manifest_sha256(row["manifest"])
                if sha256 != row["sha256"] or sha256 != manifest_sha:
                    raise Refused(f"ack sha256 {sha256} does not match the sealed digest "
                                  f"{manifest_sha} of clip {clip_id}")
                state = ClipState(row["state"])
                if state in (S.ACKNOWLEDGED, S.RELEASED, S.PURGED):
                    log.info("duplicate ack for clip %s ignored", clip_id)
                    return None
                if state not in (S.UPLOADING, S.UPLOADED):
                    raise Refused(f"ack for clip {clip_id} in state {state}: it was not uploaded")
                if state == S.UPLOADING:
                    # The platform confirmed before our last PATCH response was processed.
                    tx.transition(clip_id, S.UPLOADED, uploaded_at=now(),
                                  upload_offset=row["size"],
                                  log_body={"sha256": sha256, "by": "platform ack"})
                    tx.event("clip.uploaded", {"clip_id": clip_id, "sha256": sha256,
                                               "size": row["size"],
                                               "upload_url": row["upload_url"]})
                ack_body = {"sha256": sha256, "stored_at": payload.get("stored_at"),
                            "location": payload.get("location")}
                tx.transition(clip_id, S.ACKNOWLEDGED, ack=json.dumps(envelope),
                              acknowledged_at=now(), log_body=ack_body)
                tx.event("clip.acknowledged", {"clip_id": clip_id, **ack_body})
        except (Refused, IntegrityError) as exc:
            self._refuse_ack(clip_id, str(exc))
            return None
        log.info("clip %s acknowledged by the platform", clip_id)
        self.on_acknowledged(clip_id)
        return clip_id

    def _refuse_ack(self, clip_id: str | None, reason: str) -> None:
        log.error("acknowledgement refused: %s", reason)
        with self.store.transaction() as tx:
            tx.log("ack.refused", clip_id, {"reason": reason})
            tx.event("alert", {"code": "ack.refused", "clip_id": clip_id, "message": reason})

    # --- commands ------------------------------------------------------------------------

    def handle_command(self, message: InboundMessage) -> dict[str, Any]:
        """Check and run a command; always answers when it knows where to answer."""
        command: dict[str, Any] = {}
        accepted = False
        reply_to, correlation = message.response_topic, message.correlation_data
        try:
            envelope = _json(message.payload, "command")
            # Where to answer is read before the checks, so a refusal is answered too.
            unverified = _peek_payload(envelope)
            reply_to = reply_to or _opt_text(unverified, "reply_to")
            if reply_to is not None and not self._reply_topic_ok(reply_to):
                # Never publish where a sender of unverified data asks: drop the answer.
                log.warning("command on %s names response topic %r outside %s; not answered",
                            message.topic, reply_to, self.reply_prefix)
                reply_to = None
            command = json.loads(dsse.verify_envelope(envelope, self.trusted,
                                                      expected_type=dsse.COMMAND))
            if not isinstance(command, dict):
                raise Refused("command payload is not a JSON object")
            reply_to = message.response_topic or _opt_text(command, "reply_to")
            if reply_to is not None and not self._reply_topic_ok(reply_to):
                bad, reply_to = reply_to, None  # the refusal is not sent there either
                raise Refused(f"response topic {bad!r} is not a topic under "
                              f"{self.reply_prefix}")
            self._check_command(command, message.name, redelivery=message.dup)
            accepted = True
            handler = self.commands.get(message.name)
            if handler is None:
                raise Refused(f"unknown command {message.name!r} "
                              f"(known: {', '.join(sorted(self.commands))})")
            result = handler(command.get("args") or {})
            response = self._response(command, message.name, ok=True, result=result)
        except _Redelivered as again:
            response = again.response
        except (Refused, IntegrityError) as exc:
            reason = str(exc)
            log.error("command %s refused: %s", message.name, reason)
            with self.store.transaction() as tx:
                tx.log("command.refused", None, {"name": message.name, "reason": reason,
                                                 "command_id": command.get("id")})
                tx.event("alert", {"code": "command.refused", "name": message.name,
                                   "command_id": command.get("id"), "message": reason})
            response = self._response(command, message.name, ok=False, error=reason)
        except AgentError as exc:
            response = self._response(command, message.name, ok=False, error=exc.diagnostics())
        if accepted:
            with self.store.transaction() as tx:
                tx.execute("UPDATE seen_commands SET response = ? WHERE id = ?",
                           (json.dumps(response, ensure_ascii=False), command.get("id")))
        if reply_to:
            if correlation is None and command.get("correlation_id") is not None:
                response["correlation_id"] = command["correlation_id"]
            try:
                self.respond(reply_to, correlation,
                             json.dumps(response, ensure_ascii=False).encode())
            except AgentError as exc:
                log.error("command %s: the response to %s could not be sent: %s",
                          message.name, reply_to, exc)
        return response

    def _reply_topic_ok(self, topic: str) -> bool:
        """Under the station's reply subtree, and a topic, not a filter (no + or #)."""
        rest = topic[len(self.reply_prefix):]
        return (topic.startswith(self.reply_prefix) and bool(rest)
                and not any(c in topic for c in "+#\x00"))

    def _check_command(self, command: dict[str, Any], topic_name: str, *,
                       redelivery: bool = False) -> None:
        command_id = _text(command, "id")
        if command.get("name") != topic_name:
            raise Refused(f"command names {command.get('name')!r} but came on cmd/{topic_name}")
        if command.get("station_id") != self.config.station.id:
            raise Refused(f"command is for station {command.get('station_id')!r}")
        try:
            issued = parse_rfc3339(_text(command, "issued_at"))
            expires = parse_rfc3339(_text(command, "expires_at"))
        except ValueError as exc:
            raise Refused(f"command times are not RFC 3339: {exc}") from exc
        current = datetime.now(UTC)
        if expires <= current:
            raise Refused(f"command {command_id} expired at {rfc3339(expires)}")
        if issued > current + CLOCK_SKEW:
            raise Refused(f"command {command_id} is issued in the future ({rfc3339(issued)})")
        max_age = timedelta(seconds=self.config.platform.command_max_age_s
                            if self.config.platform else 600)
        if current - issued > max_age:
            raise Refused(f"command {command_id} is stale: issued {rfc3339(issued)}")
        with self.store.transaction() as tx:
            # Forgotten a day after they expire, not at once: a station clock that ran ahead
            # and was set back must not reopen the window for a captured command.
            tx.execute("DELETE FROM seen_commands WHERE expires_at < ?",
                       (rfc3339(current - SEEN_COMMANDS_MARGIN),))
            seen = tx.one("SELECT response FROM seen_commands WHERE id = ?", (command_id,))
            answered = seen["response"] if seen is not None else None
            if seen is not None and not (redelivery and answered is not None):
                raise Refused(f"command {command_id} was already received (replay)")
            if seen is not None:
                # The broker's own resend (our settle was lost with the connection):
                # answered as the first time, nothing runs again.
                tx.log("command.redelivered", None, {"command_id": command_id,
                                                     "name": topic_name})
            else:
                tx.execute("INSERT INTO seen_commands (id, received_at, expires_at) "
                           "VALUES (?,?,?)", (command_id, now(), rfc3339(expires)))
                tx.log("command.accepted", None, {"command_id": command_id,
                                                  "name": topic_name,
                                                  "args": command.get("args") or {}})
        if answered is not None:
            raise _Redelivered(json.loads(answered))

    def _response(self, command: dict[str, Any], name: str, *, ok: bool,
                  result: dict[str, Any] | None = None, error: str | None = None
                  ) -> dict[str, Any]:
        return {"command_id": command.get("id"), "name": name, "ok": ok, "result": result,
                "error": error, "at": now(), "correlation_id": command.get("correlation_id")}


def tag_command(config: Config, store: Store) -> CommandHandler:
    """``tag``: add a case to clips; with ``remove: true`` take it off them; with
    ``replaces: OLD`` correct case OLD into ``case_id`` (PROTOCOL.md section 6)."""
    def run(args: dict[str, Any]) -> dict[str, Any]:
        case_id, clips = args.get("case_id"), args.get("clips")
        remove, replaces = args.get("remove", False), args.get("replaces")
        if not isinstance(case_id, str) or not isinstance(clips, list) or not isinstance(
                remove, bool) or not (replaces is None or isinstance(replaces, str)):
            raise Refused("tag needs args {case_id: string, clips: [clip_id, ...]} (and "
                          "optionally remove: boolean or replaces: string)")
        if not remove:
            check_case_id(case_id, config.custody.case_id_pattern)
        tagged, unknown, unchanged = [], [], []
        for clip_id in clips:
            if not isinstance(clip_id, str) or store.query_one(
                    "SELECT 1 FROM clips WHERE clip_id = ?", (clip_id,)) is None:
                unknown.append(clip_id)
                continue
            try:
                if remove:
                    untag_clip(store, clip_id, case_id, source="platform-command")
                elif replaces is not None:
                    retag_clip(store, clip_id, replaces, case_id,
                               pattern=config.custody.case_id_pattern,
                               source="platform-command")
                elif tag_clip(store, clip_id, case_id, pattern=config.custody.case_id_pattern,
                              source="platform-command") is None:
                    unchanged.append(clip_id)
                    continue
            except TagError:
                unchanged.append(clip_id)  # not in the case to remove or correct
                continue
            tagged.append(clip_id)
        return {"tagged": tagged, "unknown": unknown, "unchanged": unchanged}
    return run


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise Refused(f"{what} is not a DSSE envelope (JSON object)")
    return value


def _peek_payload(envelope: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(dsse.b64decode(envelope.get("payload", "")))
        return value if isinstance(value, dict) else {}
    except (ValueError, TypeError):
        return {}


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise Refused(f"field {key!r} is missing or not a string")
    return value


def _opt_text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _manifest_sha256(manifest_json: str | None) -> str | None:
    if not manifest_json:
        return None
    envelope = json.loads(manifest_json)
    manifest = json.loads(dsse.b64decode(envelope["payload"]))
    digest: str | None = manifest["file"]["digests"]["sha256"]
    return digest
