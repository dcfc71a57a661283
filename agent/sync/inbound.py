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

Hostile input: a message is parsed with agent.boundedjson (size, depth,
numbers, duplicate keys bounded) and its payload checked field by field
against the shape it must have (and a command's args against its command's
shape) before anything uses it or anything is stored.  Every malformed or
untrusted message is refused with a named code (``Refused.code``), and a
command is answered whenever a reply topic is known.  A command id is
recorded as seen only once the command passed every check, and its answer
is stored with it whatever happens in the handler.  Refusals are written
through agent.sync.refusals: bounded and collapsed, so junk cannot grow the
custody log without bound.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import boundedjson
from agent.config import Config
from agent.custody import dsse
from agent.errors import AgentError, IntegrityError
from agent.store import ClipState, Store
from agent.sync.mqtt import InboundMessage
from agent.sync.refusals import RefusalLog, bounded
from agent.tagging import TagError, check_case_id, retag_clip, tag_clip, untag_clip
from agent.timeutil import now, parse_rfc3339, rfc3339

log = logging.getLogger(__name__)
S = ClipState
CLOCK_SKEW = timedelta(seconds=60)
SEEN_COMMANDS_MARGIN = timedelta(days=1)

# An ack is ~300 bytes and a tag command for 10,000 clips ~400 KiB: anything bigger
# is not a platform message.  Nothing the platform signs is nested more than 4 deep.
MAX_MESSAGE_BYTES = 512 * 1024
MAX_DEPTH = 8
# Refusals written in full once per code and window; the repeats are counted.
REFUSAL_WINDOW_S = 300.0

Responder = Callable[[str, bytes | None, bytes], None]
CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


class Refused(AgentError):
    """A platform message that fails a trust rule or is malformed.

    ``code`` names the refusal (docs/PROTOCOL.md): ``too-large``,
    ``not-json``, ``not-envelope``, ``signature``, ``payload``, ``station``,
    ``unknown-clip``, ``digest``, ``state`` (acks); ``name``, ``times``,
    ``expired``, ``future``, ``stale``, ``replay``, ``reply-topic``,
    ``unknown-command``, ``args`` (commands, besides the common ones).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Field:
    """The shape of one field of a platform payload."""

    kind: str  # "text", "object", "bool", "text-list", "int"
    required: bool = True
    max_len: int = 256  # characters of a text; items of a list; the largest int
    min_value: int = 0  # the smallest int

    def problem(self, value: Any) -> str | None:
        if self.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                return f"is a {_json_type(value)}, not an integer"
            return None if self.min_value <= value <= self.max_len else \
                f"is {value} (from {self.min_value} to {self.max_len})"
        if self.kind == "object":
            return None if isinstance(value, dict) else f"is a {_json_type(value)}, not an object"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"is a {_json_type(value)}, not a boolean"
        if self.kind == "text":
            if not isinstance(value, str) or not value:
                return f"is a {_json_type(value)}, not a non-empty string"
            return None if len(value) <= self.max_len else \
                f"is {len(value)} characters long (at most {self.max_len})"
        if not isinstance(value, list):
            return f"is a {_json_type(value)}, not a list of strings"
        if len(value) > self.max_len:
            return f"has {len(value)} items (at most {self.max_len})"
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item or len(item) > 256:
                return f"item {i} is not a string of 1 to 256 characters"
        return None


ACK_SHAPE = {"clip_id": Field("text"), "sha256": Field("text"), "station_id": Field("text"),
             "stored_at": Field("text", required=False, max_len=64),
             "location": Field("text", required=False, max_len=2048)}
COMMAND_SHAPE = {"id": Field("text"), "name": Field("text", max_len=64),
                 "station_id": Field("text"), "issued_at": Field("text", max_len=64),
                 "expires_at": Field("text", max_len=64),
                 "reply_to": Field("text", required=False, max_len=1024),
                 "correlation_id": Field("text", required=False)}
#: The args each command takes (docs/PROTOCOL.md section 6); no other keys are accepted.
COMMAND_ARGS: dict[str, dict[str, Field]] = {
    "status": {}, "rescan": {}, "sync-clock": {},
    "tag": {"case_id": Field("text"), "clips": Field("text-list", max_len=10000),
            "remove": Field("bool", required=False), "replaces": Field("text", required=False)},
    # Remote care (agent/sync/care.py): what IT staff would otherwise need a shell for.
    "requeue": {"clips": Field("text-list", max_len=1000),
                "note": Field("text", required=False, max_len=500)},
    "doctor": {"network": Field("bool", required=False)},
    "logs": {"lines": Field("int", required=False, max_len=1000, min_value=1)},
    "outbox-retry": {"item": Field("int", max_len=2**62, min_value=1),
                     "note": Field("text", required=False, max_len=500)},
    "outbox-drop": {"item": Field("int", max_len=2**62, min_value=1),
                    "reason": Field("text", max_len=500), "force": Field("bool", required=False)},
    "resend-events": {"from_seq": Field("int", max_len=2**53),
                      "to_seq": Field("int", max_len=2**53)},
}


def check_shape(value: Any, shape: dict[str, Field], what: str, code: str = "payload", *,
                closed: bool = False) -> dict[str, Any]:
    """``value`` if it is an object whose fields have ``shape``; Refused(``code``) if not.

    Unknown fields are ignored unless ``closed``.
    """
    if not isinstance(value, dict):
        raise Refused(code, f"{what} is a {_json_type(value)}, not a JSON object")
    for name, spec in shape.items():
        item = value.get(name)
        if item is None:
            if spec.required:
                raise Refused(code, f"{what}: field {name!r} is missing")
            continue
        problem = spec.problem(item)
        if problem is not None:
            raise Refused(code, f"{what}: field {name!r} {problem}")
    if closed:
        unknown = sorted(set(value) - set(shape))
        if unknown:
            raise Refused(code, f"{what}: unknown field(s) {bounded(', '.join(unknown), 80)}"
                                f" (accepted: {', '.join(shape) or 'none'})")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object" if isinstance(value, dict) \
        else type(value).__name__


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
        self.refusals = RefusalLog(store, window_s=REFUSAL_WINDOW_S)
        self._stopping = threading.Event()
        self.reply_prefix = f"bwc/v1/stations/{config.station.id}/reply/"
        # The id of the command whose handler runs now (handlers name it in custody entries).
        self.running_command: str | None = None
        self._thread = threading.Thread(target=self._run, name="inbound", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.queue.put(None)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._flush_refusals(force=True)

    def deliver(self, message: InboundMessage) -> None:
        """Called on paho's network thread: enqueue only."""
        self.queue.put(message)

    def idle(self) -> bool:
        """No message waiting or being processed (its follow-up work already queued)."""
        return self.queue.unfinished_tasks == 0

    def _flush_refusals(self, *, force: bool = False) -> None:
        try:
            self.refusals.flush(force=force)
        except AgentError as exc:
            log.error("refusal summary could not be recorded: %s", exc.diagnostics())

    def _run(self) -> None:
        while True:
            try:
                message = self.queue.get(timeout=self.refusals.window_s / 10)
            except queue.Empty:
                self._flush_refusals()  # the summary of a window that has ended
                continue
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
        clip_id: str | None = None  # set once the clip is known to this station
        try:
            envelope = _json(raw, "ack")
            payload = check_shape(_signed_json(envelope, self.trusted, dsse.ACK, "ack"),
                                  ACK_SHAPE, "ack payload")
            claimed, sha256 = payload["clip_id"], payload["sha256"]
            if payload["station_id"] != self.config.station.id:
                raise Refused("station", f"ack names station {payload['station_id']!r}, "
                                         f"not {self.config.station.id!r}")
            with self.store.transaction() as tx:
                row = tx.one("SELECT * FROM clips WHERE clip_id = ?", (claimed,))
                if row is None:
                    raise Refused("unknown-clip", f"ack for unknown clip {claimed!r}")
                clip_id = claimed
                manifest_sha = _manifest_sha256(row["manifest"])
                if sha256 != row["sha256"] or sha256 != manifest_sha:
                    raise Refused("digest", f"ack sha256 {sha256} does not match the sealed "
                                            f"digest {manifest_sha} of clip {clip_id}")
                state = ClipState(row["state"])
                if state in (S.ACKNOWLEDGED, S.RELEASED, S.PURGED):
                    log.info("duplicate ack for clip %s ignored", clip_id)
                    return None
                if state not in (S.UPLOADING, S.UPLOADED):
                    raise Refused("state", f"ack for clip {clip_id} in state {state}: it was "
                                           "not uploaded")
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
        except Refused as exc:
            self.refusals.refuse("ack", exc.code, str(exc), payload=raw, clip_id=clip_id)
            return None
        assert clip_id is not None
        log.info("clip %s acknowledged by the platform", clip_id)
        self.on_acknowledged(clip_id)
        return clip_id

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
                log.warning("command on %s names response topic %s outside %s; not answered",
                            message.topic, bounded(repr(reply_to), 120), self.reply_prefix)
                reply_to = None
            command = check_shape(_signed_json(envelope, self.trusted, dsse.COMMAND,
                                               "command"), COMMAND_SHAPE, "command payload")
            reply_to = message.response_topic or command.get("reply_to")
            if reply_to is not None and not self._reply_topic_ok(reply_to):
                bad, reply_to = reply_to, None  # the refusal is not sent there either
                raise Refused("reply-topic", f"response topic {bad!r} is not a topic under "
                                             f"{self.reply_prefix}")
            handler = self.commands.get(message.name)
            if handler is None:
                raise Refused("unknown-command", f"unknown command "
                                                 f"{bounded(message.name, 64)!r} (known: "
                                                 f"{', '.join(sorted(self.commands))})")
            args = command.get("args")
            args = check_shape({} if args is None else args,
                               COMMAND_ARGS.get(message.name, {}), f"{message.name} args",
                               "args", closed=message.name in COMMAND_ARGS)
            self._check_command(command, message.name, redelivery=message.dup)
            accepted = True
            self.running_command = command["id"]
            try:
                result = self._run_handler(handler, message.name, args)
            finally:
                self.running_command = None
            response = self._response(command, message.name, ok=True, result=result)
        except _Redelivered as again:
            response = again.response
        except Refused as exc:
            fields = {"name": message.name, "command_id": command.get("id")}
            if accepted:
                # It passed every check; the platform asked for something that cannot be
                # done (an unknown clip, a case ID the pattern refuses): answered, no alert.
                log.warning("command %s: %s", message.name, bounded(str(exc)))
            else:
                self.refusals.refuse("command", exc.code, str(exc), payload=message.payload,
                                     fields=fields)
            response = self._response(command, message.name, ok=False,
                                      error=f"{exc.code}: {bounded(str(exc), 500)}")
        except AgentError as exc:
            response = self._response(command, message.name, ok=False,
                                      error=bounded(exc.diagnostics(), 500))
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

    @staticmethod
    def _run_handler(handler: CommandHandler, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run an accepted command; a defect in it is an answer, not a lost command."""
        try:
            return handler(args)
        except AgentError:
            raise
        except Exception as exc:
            log.exception("command %s failed", name)
            raise AgentError(f"command {name} failed inside the station "
                             f"({type(exc).__name__}); see the station log") from exc

    def _reply_topic_ok(self, topic: str) -> bool:
        """Under the station's reply subtree, and a topic, not a filter (no + or #)."""
        rest = topic[len(self.reply_prefix):]
        return (topic.startswith(self.reply_prefix) and bool(rest)
                and not any(c in topic for c in "+#\x00"))

    def _check_command(self, command: dict[str, Any], topic_name: str, *,
                       redelivery: bool = False) -> None:
        command_id = command["id"]
        if command["name"] != topic_name:
            raise Refused("name", f"command names {command['name']!r} but came on "
                                  f"cmd/{bounded(topic_name, 64)}")
        if command["station_id"] != self.config.station.id:
            raise Refused("station", f"command is for station {command['station_id']!r}")
        try:
            issued = parse_rfc3339(command["issued_at"])
            expires = parse_rfc3339(command["expires_at"])
        except ValueError as exc:
            raise Refused("times", f"command times are not RFC 3339: {exc}") from exc
        current = datetime.now(UTC)
        if expires <= current:
            raise Refused("expired", f"command {command_id} expired at {rfc3339(expires)}")
        if issued > current + CLOCK_SKEW:
            raise Refused("future", f"command {command_id} is issued in the future "
                                    f"({rfc3339(issued)})")
        max_age = timedelta(seconds=self.config.platform.command_max_age_s
                            if self.config.platform else 600)
        if current - issued > max_age:
            raise Refused("stale", f"command {command_id} is stale: issued {rfc3339(issued)}")
        with self.store.transaction() as tx:
            # Forgotten a day after they expire, not at once: a station clock that ran ahead
            # and was set back must not reopen the window for a captured command.
            tx.execute("DELETE FROM seen_commands WHERE expires_at < ?",
                       (rfc3339(current - SEEN_COMMANDS_MARGIN),))
            seen = tx.one("SELECT response FROM seen_commands WHERE id = ?", (command_id,))
            answered = seen["response"] if seen is not None else None
            if seen is not None and not (redelivery and answered is not None):
                raise Refused("replay", f"command {command_id} was already received (replay)")
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
        check_shape(args, COMMAND_ARGS["tag"], "tag args", "args", closed=True)
        case_id, clips = args["case_id"], args["clips"]
        remove, replaces = bool(args.get("remove")), args.get("replaces")
        if not remove:
            check_case_id(case_id, config.custody.case_id_pattern)
        tagged, unknown, unchanged = [], [], []
        for clip_id in clips:
            if store.query_one(
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
        value = boundedjson.loads(raw, max_bytes=MAX_MESSAGE_BYTES, max_depth=MAX_DEPTH)
    except boundedjson.JSONInputError as exc:
        code = "too-large" if len(raw) > MAX_MESSAGE_BYTES else "not-json"
        raise Refused(code, f"{what} is not acceptable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Refused("not-envelope", f"{what} is not a DSSE envelope (JSON object)")
    return value


def _signed_json(envelope: dict[str, Any], trusted: dict[str, Any], payload_type: str,
                 what: str) -> Any:
    """The JSON payload of an envelope whose signature verifies; Refused otherwise."""
    try:
        payload = dsse.verify_envelope(envelope, trusted, expected_type=payload_type)
    except IntegrityError as exc:
        raise Refused("signature", str(exc)) from None
    try:
        return boundedjson.loads(payload, max_bytes=MAX_MESSAGE_BYTES, max_depth=MAX_DEPTH)
    except boundedjson.JSONInputError as exc:
        raise Refused("payload", f"{what} payload is not acceptable JSON: {exc}") from None


def _peek_payload(envelope: dict[str, Any]) -> dict[str, Any]:
    payload = envelope.get("payload")
    if not isinstance(payload, str):
        return {}
    try:
        value = boundedjson.loads(dsse.b64decode(payload), max_bytes=MAX_MESSAGE_BYTES,
                                  max_depth=MAX_DEPTH)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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
