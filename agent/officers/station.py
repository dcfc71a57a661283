"""The officer at the station: sign in by card, tag a clip with a case, mark it important.

The library API the station screen calls.  The screen identifies the officer
by the identity card the credential names (``card_id``, as the card reader
types it), optionally together with the officer number; every action names
the credential, is checked against the roster held now, and is recorded as a
custody log entry:

- :func:`tag` — ``clip.tagged`` with ``source: "station-officer"``,
  ``by: <officer id>`` and ``credential_id`` (add, remove or correct a case);
- :func:`mark_important` — ``clip.important`` (``important`` true or false),
  the same names; the clip is then uploaded before the others.

Who may act (the role names are those of the credential's ``roles``):

- an officer whose credential is valid now (signature, not revoked, within
  its validity window), on the sealed clips recorded under their officer
  number; they may remove or correct only the case tags an officer at the
  station made with that number;
- ``supervisor``: on any sealed clip, and any tag made at the station.

Tags from the platform, case windows or the command line are never removed
here.  Anything else is refused with :class:`NotPermitted`, which says why;
a refused sign-in is :class:`SignInRefused` with a ``reason`` code the
screen puts into words.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import Config
from agent.errors import AgentError
from agent.officers import registry
from agent.officers.credentials import Credential, Outcome, best, judge
from agent.store import Store
from agent.tagging import add_case, cases_of, check_case_id, correct_case, remove_case
from agent.timeutil import rfc3339

SOURCE = "station-officer"
OFFICER = "officer"
SUPERVISOR = "supervisor"
ROLES = (OFFICER, SUPERVISOR)

# What the screen lists: clips docked within RECENT_DAYS, newest first, at most
# RECENT_CLIPS; case numbers of windows that ended within RECENT_DAYS (or are open).
RECENT_DAYS = 7
RECENT_CLIPS = 50
CASE_CHOICES = 12


class NotPermitted(AgentError):
    """The officer at the station may not do this; the text says why, ``code`` which case
    it is (``not-own-clip``, ``not-sealed``, ``not-own-tag``, or a sign-in reason)."""

    def __init__(self, message: str, code: str = "not-permitted") -> None:
        super().__init__(message)
        self.code = code


class SignInRefused(NotPermitted):
    """No credential valid now for what was entered; ``reason`` says which case it is.

    Reasons: ``unknown`` (no credential for this card, or for this card and officer
    number), an :class:`Outcome` value (``revoked``, ``expired``, ``not-yet-valid``,
    ``bad-signature``) of the best credential the card names, ``not-checked`` (the
    station checks no credentials).
    """

    def __init__(self, message: str, reason: str, credential: Credential | None = None) -> None:
        super().__init__(message, reason)
        self.reason = reason
        self.credential = credential


def _judged(config: Config, candidates: list[registry.Held], what: str) -> Credential:
    keys = registry.load_keys(config.custody.credential_key_file)
    if not keys:
        raise SignInRefused("this station checks no officer credentials "
                            "(custody.credential_key_file is not set)", Outcome.NOT_CHECKED.value)
    if not candidates:
        raise SignInRefused(f"no credential in the station's roster for {what}", "unknown")
    at = datetime.now(UTC)
    judged = [(judge(h.credential, keys=keys, at=at, serial=None, revocation=h.revocation),
               h.credential) for h in candidates]
    chosen = best(judged)
    assert chosen is not None
    outcome, credential = chosen
    if outcome != Outcome.VALID:
        raise SignInRefused(f"credential {credential.credential_id} of officer "
                            f"{credential.officer_id} is not valid now: {outcome.value}",
                            outcome.value, credential)
    return credential


def officer(store: Store, config: Config, *, credential_id: str | None = None,
            card_id: str | None = None) -> Credential:
    """The officer's credential if it is valid now; NotPermitted (SignInRefused) otherwise."""
    if credential_id is not None:
        held = registry.credential_by_id(store, credential_id)
        return _judged(config, [held] if held is not None else [],
                       f"credential {credential_id}")
    if card_id is not None:
        return _judged(config, registry.credential_by_card(store, card_id), "this card")
    raise NotPermitted("give the officer's credential id or identity card")


def sign_in(store: Store, config: Config, card_id: str, officer_id: str | None = None
            ) -> Credential:
    """The credential valid now for the card read at the station (and, when given, the
    officer number typed with it); SignInRefused otherwise.

    With an officer number, only that officer's credentials count: a card of
    another officer is ``unknown``, as a card nobody holds.
    """
    candidates = registry.credential_by_card(store, card_id)
    if officer_id is not None:
        candidates = [h for h in candidates if h.credential.officer_id == officer_id]
    return _judged(config, candidates, "this card")


def may_act_on_all(credential: Credential) -> bool:
    return SUPERVISOR in credential.roles


def _check_clip(store: Store, credential: Credential, clip_id: str) -> Any:
    clip = store.clip(clip_id)
    if clip["officer_id"] != credential.officer_id and not may_act_on_all(credential):
        raise NotPermitted(f"clip {clip_id} was recorded by officer {clip['officer_id'] or '?'}; "
                           f"officer {credential.officer_id} may act on their own clips only",
                           "not-own-clip")
    if clip["manifest"] is None or clip["state"] == "duplicate":
        raise NotPermitted(f"clip {clip_id} is not a sealed clip of this station "
                           f"(state {clip['state']})", "not-sealed")
    return clip


def _details(credential: Credential) -> dict[str, Any]:
    return {"credential_id": credential.credential_id}


def tag_maker(store: Store, clip_id: str, case_id: str) -> tuple[str, str | None] | None:
    """Who put ``clip_id`` in ``case_id``: (source, the officer number at the station or
    None); None if the clip is not in that case."""
    row = cases_of(store, clip_id).get(case_id)
    if row is None:
        return None
    entry = store.query_one("SELECT body FROM custody_log WHERE seq = ?", (row["tag_seq"],))
    body = json.loads(entry["body"]) if entry is not None else {}
    return str(row["source"]), body.get("by") if row["source"] == SOURCE else None


def may_remove(credential: Credential, maker: tuple[str, str | None]) -> bool:
    """Whether ``credential`` may take a clip out of a case that ``maker`` put it in."""
    source, by = maker
    return source == SOURCE and (by == credential.officer_id or may_act_on_all(credential))


def tag(store: Store, config: Config, credential: Credential, clip_id: str, case_id: str, *,
        remove: bool = False, replaces: str | None = None) -> dict[str, Any] | None:
    """Add (or remove, or correct ``replaces`` into) a case; the log entry body, or None
    if the clip is in that case already."""
    _check_clip(store, credential, clip_id)
    if not remove:
        check_case_id(case_id, config.custody.case_id_pattern)
    undone = case_id if remove else replaces
    if undone is not None:
        maker = tag_maker(store, clip_id, undone)
        if maker is not None and not may_remove(credential, maker):
            raise NotPermitted(f"clip {clip_id} was put in case {undone!r} by {maker[0]}"
                               f"{' ' + maker[1] if maker[1] else ''}; officer "
                               f"{credential.officer_id} may undo only their own tags made "
                               "at the station", "not-own-tag")
    with store.transaction() as tx:
        if remove:
            entry = remove_case(tx, clip_id, case_id, source=SOURCE, by=credential.officer_id,
                                details=_details(credential))
        elif replaces is not None:
            entry = correct_case(tx, clip_id, replaces, case_id, source=SOURCE,
                                 by=credential.officer_id, details=_details(credential))
        else:
            added = add_case(tx, clip_id, case_id, source=SOURCE, by=credential.officer_id,
                             details=_details(credential))
            if added is None:
                return None
            entry = added
    return entry.body


def mark_important(store: Store, credential: Credential, clip_id: str,
                   important: bool = True) -> dict[str, Any] | None:
    """Mark a clip important (or not); the log entry body, None if it was so already."""
    _check_clip(store, credential, clip_id)
    with store.transaction() as tx:
        clip = tx.clip(clip_id)
        if bool(clip["important"]) == important:
            return None
        body = {"important": important, "source": SOURCE, "by": credential.officer_id,
                "credential_id": credential.credential_id, "sha256": clip["sha256"]}
        tx.update_clip(clip_id, important=int(important))
        entry = tx.log("clip.important", clip_id, body)
        tx.event("clip.important", {"clip_id": clip_id, "log_seq": entry.seq, **body})
    return body


# --- what the screen offers the officer -----------------------------------------------------

def recent_clips(store: Store, credential: Credential, *, serial: str | None = None,
                 days: int = RECENT_DAYS, limit: int = RECENT_CLIPS) -> list[dict[str, Any]]:
    """The sealed clips the officer may act on, docked within ``days``, newest first: the
    officer's own (a supervisor's: every officer's), of camera ``serial`` if given.

    Each with its cases (``case_id``, ``removable`` by this credential).
    """
    since = rfc3339(datetime.now(UTC) - timedelta(days=days))
    where = ["manifest IS NOT NULL", "state != 'duplicate'", "discovered_at >= ?"]
    params: list[Any] = [since]
    if not may_act_on_all(credential):
        where.append("officer_id = ?")
        params.append(credential.officer_id)
    if serial is not None:
        where.append("device_serial = ?")
        params.append(serial)
    rows = store.query(f"SELECT clip_id, name, device_serial, officer_id, officer_name, "
                       f"important, start_at, recorded_start, docked_at, discovered_at, size "
                       f"FROM clips WHERE {' AND '.join(where)} "
                       f"ORDER BY COALESCE(start_at, recorded_start, discovered_at) DESC, "
                       f"clip_id DESC LIMIT ?", (*params, limit))
    clips = []
    for row in rows:
        cases = []
        for case_id in cases_of(store, row["clip_id"]):
            maker = tag_maker(store, row["clip_id"], case_id)
            cases.append({"case_id": case_id,
                          "removable": maker is not None and may_remove(credential, maker)})
        clips.append({"clip_id": row["clip_id"], "name": row["name"],
                      "serial": row["device_serial"], "officer_id": row["officer_id"],
                      "officer_name": row["officer_name"], "important": bool(row["important"]),
                      "recorded_at": row["start_at"] or row["recorded_start"]
                      or row["docked_at"] or row["discovered_at"],
                      "size": row["size"], "cases": cases})
    return clips


def case_choices(store: Store, credential: Credential, *, days: int = RECENT_DAYS,
                 limit: int = CASE_CHOICES) -> list[str]:
    """Case numbers the officer is likely to want: those of the platform's case windows for
    the officer that are open or ended within ``days`` (newest revision, not withdrawn),
    then the cases of the officer's clips tagged within ``days``; newest first, no repeats."""
    since = rfc3339(datetime.now(UTC) - timedelta(days=days))
    windows = store.query(
        "SELECT w.case_id, w.end_at FROM case_windows w WHERE w.officer_id = ? "
        "AND w.revision = (SELECT MAX(revision) FROM case_windows v "
        "                  WHERE v.window_id = w.window_id) "
        "AND w.withdrawn = 0 AND w.end_at >= ? ORDER BY w.end_at DESC LIMIT ?",
        (credential.officer_id, since, limit))
    tagged = store.query(
        "SELECT k.case_id, MAX(k.tag_seq) AS seq FROM clip_cases k JOIN clips c "
        "ON c.clip_id = k.clip_id WHERE c.officer_id = ? AND c.discovered_at >= ? "
        "GROUP BY k.case_id ORDER BY seq DESC LIMIT ?",
        (credential.officer_id, since, limit))
    choices: list[str] = []
    for case_id in [r["case_id"] for r in windows] + [r["case_id"] for r in tagged]:
        if case_id not in choices:
            choices.append(case_id)
    return choices[:limit]
