"""Remote care: the platform's signed commands for what IT staff would otherwise need a shell for.

``requeue``, ``doctor``, ``logs``, ``outbox-retry`` and ``outbox-drop``
(docs/PROTOCOL.md section 6) run only once agent.sync.inbound accepted the
command: signed by the platform key, for this station, within its validity,
never seen before, its args exactly the shape of COMMAND_ARGS.  Each
accepted command is a ``command.accepted`` custody log entry (with its id
and args); what a command changes is a custody log entry of its own naming
the command (``requeued_by`` / ``by``: ``platform:<command id>``):
``clip.sealed`` of a requeued clip, ``outbox.retried``, ``outbox.dropped``.

``doctor`` answers with the report ``bwc-agent doctor --json`` prints (the
broker and upload server checks with a 5 s deadline each, unless
``network`` is false).  ``logs`` answers with the newest lines of the
daemon's own log (agent.logsetup: at most 1000, each cut to 2000
characters, secrets redacted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent import doctor, logsetup
from agent.config import Config
from agent.outboxcare import drop_item, retry_item
from agent.requeue import requeue_clip, requeue_problem
from agent.store import Store

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]
DOCTOR_DEADLINE_S = 5.0
DEFAULT_LOG_LINES = 100


def handlers(config: Config, store: Store, command_id: Callable[[], str | None]
             ) -> dict[str, CommandHandler]:
    """The remote care commands, by name; ``command_id()`` is the running command's id."""

    def by() -> str:
        return f"platform:{command_id() or 'unknown'}"

    def requeue(args: dict[str, Any]) -> dict[str, Any]:
        requeued: list[str] = []
        refused: dict[str, str] = {}
        unknown: list[str] = []
        for clip_id in args["clips"]:
            row = store.query_one("SELECT * FROM clips WHERE clip_id = ?", (clip_id,))
            if row is None:
                unknown.append(clip_id)
                continue
            problem = requeue_problem(row)
            if problem is not None:
                refused[clip_id] = problem
                continue
            requeue_clip(store, clip_id, by=by(), note=args.get("note"))
            requeued.append(clip_id)
        return {"requeued": requeued, "refused": refused, "unknown": unknown}

    def run_doctor(args: dict[str, Any]) -> dict[str, Any]:
        report = doctor.run(config, doctor.Environment(deadline_s=DOCTOR_DEADLINE_S),
                            network=args.get("network", True))
        return report.as_dict()

    def logs(args: dict[str, Any]) -> dict[str, Any]:
        ring = logsetup.ring()
        lines = ring.last(args.get("lines", DEFAULT_LOG_LINES)) if ring is not None else []
        return {"lines": lines}

    def outbox_retry(args: dict[str, Any]) -> dict[str, Any]:
        return retry_item(store, args["item"], by=by(), note=args.get("note"))

    def outbox_drop(args: dict[str, Any]) -> dict[str, Any]:
        return drop_item(store, args["item"], by=by(), reason=args["reason"],
                         force=bool(args.get("force")))

    return {"requeue": requeue, "doctor": run_doctor, "logs": logs,
            "outbox-retry": outbox_retry, "outbox-drop": outbox_drop}
