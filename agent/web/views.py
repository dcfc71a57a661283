"""The station's figures (agent.overview) put into words, in the language of one page.

Nothing here computes a state: it only chooses the words.  The browser
receives finished text and numbers and writes them with ``textContent``,
never as HTML, so a camera that calls its officer ``<script>`` shows that text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.web.i18n import Language


def size_text(n: int) -> str:
    if n >= 10 * 1024**3:
        return f"{n / 1024**3:.0f} GB"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MB"
    return f"{max(n, 0) / 1024:.0f} KB"


def eta_text(lang: Language, seconds: int | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return lang.gettext("less than a minute left")
    minutes = round(seconds / 60)
    return lang.ngettext("about %(n)d minute left", "about %(n)d minutes left",
                         minutes) % {"n": minutes}


def camera_state_text(lang: Language, state: str) -> str:
    _ = lang.gettext
    return {
        "reading": _("Reading the camera"),
        "copying": _("Copying"),
        "checking": _("Checking"),
        "sealing": _("Sealing"),
        "uploading": _("Uploading"),
        "safe": _("Safe to undock"),
        "attention": _("Needs attention"),
    }.get(state, state)


def clip_step_text(lang: Language, step: str) -> str:
    _ = lang.gettext
    return {
        "waiting": _("Waiting"),
        "copying": _("Copying"),
        "verifying": _("Checking"),
        "probing": _("Checking the video"),
        "sealing": _("Sealing"),
        "sealed": _("Sealed"),
        "uploading": _("Uploading"),
        "uploaded": _("Uploaded"),
        "acknowledged": _("Confirmed by the platform"),
        "released": _("Confirmed by the platform"),
        "purged": _("Confirmed by the platform"),
        "duplicate": _("Already in the station"),
        "upload_refused": _("Sealed; upload refused, IT will handle it"),
        "attention": _("Needs attention"),
    }.get(step, step)


def problem_text(lang: Language, code: str, failed: int) -> str:
    """What is wrong and what the officer should do, in one sentence or two."""
    _ = lang.gettext
    if code == "clips.failed":
        return lang.ngettext(
            "%(n)d recording could not be copied. Leave the camera docked and call IT.",
            "%(n)d recordings could not be copied. Leave the camera docked and call IT.",
            failed) % {"n": failed}
    return {
        "camera.unreadable": _("The camera could not be read. Undock it and dock it again; "
                               "if this happens again, call IT."),
        "camera.entries_unreadable": _("Some folders on the camera could not be read. Leave "
                                       "the camera docked and call IT."),
        "disk.full": _("The station's storage is full. Leave the camera docked and call IT; "
                       "no recording is lost."),
        "session.failed": _("The copy stopped with an error. Undock the camera and dock it "
                            "again; if this happens again, call IT."),
    }.get(code, _("Leave the camera docked and call IT."))


def _advice(lang: Language, view: Mapping[str, Any]) -> str:
    _ = lang.gettext
    state = view["state"]
    if state == "attention":
        failed = sum(1 for c in view["clips"] if c["step"] == "attention")
        return " ".join(problem_text(lang, code, failed) for code in view["problems"])
    if state == "safe":
        if view["recordings"] == 0:
            return _("There are no recordings on this camera.")
        return _("Every recording is in the station, checked and sealed.")
    if state == "uploading":
        return _("Leave the camera docked until the platform confirms its recordings.")
    return _("Do not undock yet.")


def _advice_short(lang: Language, view: Mapping[str, Any]) -> str:
    """What to do, in a few words, for a tile too small for the whole advice."""
    if view["state"] != "attention":
        return ""
    if set(view["problems"]) <= {"camera.unreadable", "session.failed"}:
        return lang.gettext("Undock and dock again.")
    return lang.gettext("Keep it docked; call IT.")


def _detail(lang: Language, view: Mapping[str, Any]) -> str:
    state = view["state"]
    if state in ("copying", "checking", "sealing"):
        parts = []
        if view["to_copy"]:
            parts.append(lang.gettext("Recording %(index)d of %(count)d")
                         % {"index": max(1, view["started"]), "count": view["to_copy"]})
        eta = eta_text(lang, view["eta_s"])
        if eta:
            parts.append(eta)
        return " · ".join(parts)
    if state in ("safe", "uploading") and view["recordings"]:
        parts = [lang.ngettext("%(n)d recording sealed", "%(n)d recordings sealed",
                               view["recordings"]) % {"n": view["recordings"]}]
        if view["uploading"]:
            parts.append(lang.ngettext("%(n)d waiting for the platform",
                                       "%(n)d waiting for the platform",
                                       view["uploading"]) % {"n": view["uploading"]})
        if view["acknowledged"]:
            parts.append(lang.ngettext("%(n)d confirmed by the platform",
                                       "%(n)d confirmed by the platform",
                                       view["acknowledged"]) % {"n": view["acknowledged"]})
        return " · ".join(parts)
    return ""


def tile(lang: Language, view: Mapping[str, Any]) -> dict[str, Any]:
    """One dock's tile, in words."""
    _ = lang.gettext
    officer = view["officer_name"] or _("Officer unknown")
    number = (_("No. %(number)s") % {"number": view["officer_id"]}) if view["officer_id"] else ""
    battery = view["battery"]
    total, done = view["bytes_total"], view["bytes_done"]
    return {
        "key": view["handle"],
        "camera": view["serial"] or "",  # for the officer's actions on this camera's clips
        "officer_id": view["officer_id"] or "",
        "state": view["state"],
        "safe": bool(view["safe_to_undock"]),
        "port": _("Dock %(port)s") % {"port": view["port"]},
        "officer": officer,
        "number": number,
        "serial": (_("Camera %(serial)s") % {"serial": view["serial"]}) if view["serial"] else "",
        "battery": (_("Battery %(percent)d%%") % {"percent": battery}) if battery is not None
        else "",
        "state_text": camera_state_text(lang, view["state"]),
        "advice": _advice(lang, view),
        "advice_short": _advice_short(lang, view),
        "detail": _detail(lang, view),
        "progress": {"value": done, "max": max(total, 1) if total else 1,
                     "full": view["state"] in ("safe", "uploading"),
                     "text": (_("%(done)s of %(total)s") % {"done": size_text(done),
                                                           "total": size_text(total)})
                     if total else "",
                     "label": _("Copied of this camera")},
        "errors": list(view["errors"]),
        "clips": [{"id": c.get("clip_id") or "", "name": c["name"], "step": c["step"],
                   "step_text": clip_step_text(lang, c["step"]),
                   "value": c["done"], "max": max(c["size"], 1),
                   "text": _("%(done)s of %(total)s") % {"done": size_text(c["done"]),
                                                         "total": size_text(c["size"])}}
                  for c in view["clips"]],
    }


def kiosk(lang: Language, station_id: str, views: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The officer page's whole live content."""
    tiles = [tile(lang, v) for v in views]
    return {"station": station_id, "tiles": tiles, "count": len(tiles),
            "summary": lang.ngettext("%(n)d camera docked", "%(n)d cameras docked",
                                     len(tiles)) % {"n": len(tiles)}}
