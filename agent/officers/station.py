"""The officer at the station: tag a clip with a case, mark it important, by credential.

The library API the station screen calls.  The screen identifies the officer
(by credential id, or by the identity card the credential names); every
action is checked against the roster held now and recorded as a custody log
entry naming the officer's credential:

- :func:`tag` — ``clip.tagged`` with ``source: "station-officer"``,
  ``by: <officer id>`` and ``credential_id`` (add, remove or correct a case);
- :func:`mark_important` — ``clip.important`` (``important`` true or false),
  the same names; the clip is then uploaded before the others.

Who may act: the officer whose credential is valid now (signature, not
revoked, within its validity window), on the clips recorded by that officer;
a credential with the role ``supervisor`` may act on any clip.  Anything
else is refused with :class:`NotPermitted`, which says why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.errors import AgentError
from agent.officers import registry
from agent.officers.credentials import Credential, Outcome, judge
from agent.store import Store
from agent.tagging import add_case, check_case_id, correct_case, remove_case

SOURCE = "station-officer"
SUPERVISOR = "supervisor"


class NotPermitted(AgentError):
    """The officer at the station may not do this; the text says why."""


def officer(store: Store, config: Config, *, credential_id: str | None = None,
            card_id: str | None = None) -> Credential:
    """The officer's credential if it is valid now; NotPermitted otherwise."""
    keys = registry.load_keys(config.custody.credential_key_file)
    if not keys:
        raise NotPermitted("this station checks no officer credentials "
                           "(custody.credential_key_file is not set)")
    if credential_id is not None:
        held = registry.credential_by_id(store, credential_id)
        candidates = [held] if held is not None else []
    elif card_id is not None:
        candidates = registry.credential_by_card(store, card_id)
    else:
        raise NotPermitted("give the officer's credential id or identity card")
    if not candidates:
        raise NotPermitted("no credential in the station's roster for "
                           f"{'credential ' + credential_id if credential_id else 'this card'}")
    at = datetime.now(UTC)
    outcomes = [(judge(h.credential, keys=keys, at=at, serial=None, revocation=h.revocation), h)
                for h in candidates]
    for outcome, held in outcomes:
        if outcome == Outcome.VALID:
            return held.credential
    outcome, held = outcomes[0]
    raise NotPermitted(f"credential {held.credential.credential_id} of officer "
                       f"{held.credential.officer_id} is not valid now: {outcome.value}")


def _check_clip(store: Store, credential: Credential, clip_id: str) -> Any:
    clip = store.clip(clip_id)
    if clip["officer_id"] != credential.officer_id and SUPERVISOR not in credential.roles:
        raise NotPermitted(f"clip {clip_id} was recorded by officer {clip['officer_id'] or '?'}; "
                           f"officer {credential.officer_id} may act on their own clips only")
    return clip


def _details(credential: Credential) -> dict[str, Any]:
    return {"credential_id": credential.credential_id}


def tag(store: Store, config: Config, credential: Credential, clip_id: str, case_id: str, *,
        remove: bool = False, replaces: str | None = None) -> dict[str, Any] | None:
    """Add (or remove, or correct ``replaces`` into) a case; the log entry body, or None
    if the clip is in that case already."""
    _check_clip(store, credential, clip_id)
    if not remove:
        check_case_id(case_id, config.custody.case_id_pattern)
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
