"""The officer's part of the station screen in words: who is signed in, their clips, refusals.

Like agent/web/views.py, nothing here decides anything: the library
(agent.officers.station) says what the officer may do; this module chooses the
words, in the page's language.  The browser writes every text with
``textContent``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agent.officers.credentials import Credential, Outcome
from agent.officers.station import SUPERVISOR
from agent.timeutil import parse_rfc3339
from agent.web import pictures
from agent.web.i18n import Language

# The fixed part of a case number before its year or serial number:
# 内公(治)行罚决字〔2019〕123号 -> 内公(治)行罚决字
_PREFIX = re.compile(r"(.+?)[〔\[［【(（]?\d")


def local_time(value: str | datetime | None) -> str:
    """A time (RFC 3339 text or aware datetime) as the station's local wall-clock time, the
    time the officer's watch shows."""
    if not value:
        return ""
    try:
        moment = parse_rfc3339(value) if isinstance(value, str) else value
    except ValueError:
        return str(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def identity(lang: Language, credential: Credential) -> dict[str, Any]:
    _ = lang.gettext
    supervisor = SUPERVISOR in credential.roles
    return {"name": credential.name, "officer_id": credential.officer_id,
            "number": _("No. %(number)s") % {"number": credential.officer_id},
            "supervisor": supervisor, "role": _("Supervisor") if supervisor else "",
            "credential_id": credential.credential_id}


def refusal(lang: Language, reason: str, credential: Credential | None, *,
            with_number: bool) -> str:
    """Why a sign-in was refused, in a sentence an officer can act on."""
    _ = lang.gettext
    when = (local_time(credential.not_after if reason == Outcome.EXPIRED.value
                       else credential.not_before) if credential is not None else "")
    if reason == "unknown":
        if with_number:
            return _("This officer number and card number do not belong to any officer of "
                     "this station. Check both and try again.")
        return _("This card is not known at this station. If it is your police ID card, "
                 "ask IT to check the station's roster.")
    return {
        Outcome.REVOKED.value: _("This card has been withdrawn and cannot be used. Contact "
                                 "your unit's administrator."),
        Outcome.EXPIRED.value: _("This card's credential expired on %(date)s. Ask your unit's "
                                 "administrator for a new one.") % {"date": when},
        Outcome.NOT_YET_VALID.value: _("This card's credential is valid only from %(date)s.")
        % {"date": when},
        Outcome.BAD_SIGNATURE.value: _("This card's credential cannot be checked. Call IT."),
    }.get(reason, _("Officer sign-in is not set up on this station. Call IT."))


def picture(lang: Language, clip: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The clip's picture on the list: ``kind`` (agent.web.pictures), the address of its
    thumbnail, and the text that names it for people who cannot see it."""
    _ = lang.gettext
    names = {"name": clip["name"]}
    if kind == pictures.IMAGE:
        return {"kind": kind, "src": pictures.thumbnail_url(clip["clip_id"]),
                "alt": _("First picture of %(name)s") % names}
    if kind == pictures.AUDIO:
        return {"kind": kind, "src": None,
                "alt": _("%(name)s is a sound recording, without a picture") % names}
    return {"kind": pictures.NONE, "src": None, "alt": _("No picture of %(name)s") % names}


def clip_row(lang: Language, clip: Mapping[str, Any], *, supervisor: bool,
             picture_kind: str = pictures.NONE) -> dict[str, Any]:
    _ = lang.gettext
    who = ""
    if supervisor:
        who = (_("%(name)s, No. %(number)s") % {"name": clip["officer_name"],
                                                 "number": clip["officer_id"]}
               if clip["officer_id"] else _("Officer unknown"))
    return {
        "id": clip["clip_id"],
        "name": clip["name"],
        "when": _("Recorded %(time)s") % {"time": local_time(clip["recorded_at"])},
        "camera": _("Camera %(serial)s") % {"serial": clip["serial"]},
        "officer": who,
        "important": clip["important"],
        "picture": picture(lang, clip, picture_kind),
        "add_label": _("Add case number to %(name)s") % {"name": clip["name"]},
        "mark_label": _("Mark important: %(name)s") % {"name": clip["name"]},
        "cases": [{"case_id": c["case_id"], "removable": c["removable"],
                   "remove_label": _("Remove case %(case)s from %(name)s")
                   % {"case": c["case_id"], "name": clip["name"]}}
                  for c in clip["cases"]],
    }


def prefixes(cases: Sequence[str]) -> list[str]:
    """The fixed parts of the known case numbers, for the case keyboard."""
    found: list[str] = []
    for case_id in cases:
        match = _PREFIX.match(case_id)
        if match is not None and len(match.group(1)) >= 2 and match.group(1) not in found:
            found.append(match.group(1))
    return found[:6]


def clips(lang: Language, credential: Credential, rows: Sequence[Mapping[str, Any]],
          choices: Sequence[str], serial: str | None,
          picture_kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The officer's clip list (``picture_kinds``: clip id -> agent.web.pictures kind) and
    the case numbers to pick from."""
    _ = lang.gettext
    supervisor = SUPERVISOR in credential.roles
    if serial is not None:
        title = _("Recordings of camera %(serial)s") % {"serial": serial}
    elif supervisor:
        title = _("Recordings of the last days")
    else:
        title = _("My recordings")
    return {"title": title,
            "filtered": serial is not None,
            "clips": [clip_row(lang, c, supervisor=supervisor,
                               picture_kind=(picture_kinds or {}).get(c["clip_id"],
                                                                      pictures.NONE))
                      for c in rows],
            "empty": _("No sealed recording of yours from the last days is in this station.")
            if not supervisor else _("No sealed recording from the last days is in this "
                                     "station."),
            "cases": list(choices),
            "prefixes": prefixes(choices)}
