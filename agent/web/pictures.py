"""Which picture the officer's screen shows for each clip: its thumbnail, a sound icon, or none.

A thumbnail (agent/thumbnails.py) is the first picture of a video or the
photo itself, made when the clip was probed; audio has none, and shows a
sound icon; a clip probed before the station made thumbnails, or nothing of
which decodes, shows a placeholder.  Thumbnails are never made here, at a
request: the screen never makes FFmpeg parse a camera's file.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.store import Store
from agent.thumbnails import Thumbnails

IMAGE, AUDIO, NONE = "image", "audio", "none"


def kinds(store: Store, thumbnails: Thumbnails, clip_ids: Sequence[str]) -> dict[str, str]:
    """clip id -> ``image`` (a thumbnail is kept), ``audio`` (a sound recording) or ``none``."""
    if not clip_ids:
        return {}
    marks = ",".join("?" for _ in clip_ids)
    media = {r["clip_id"]: r["kind"] for r in store.query(
        f"SELECT clip_id, json_extract(media, '$.kind') AS kind FROM clips "
        f"WHERE clip_id IN ({marks})", tuple(clip_ids))}
    return {clip_id: IMAGE if thumbnails.has(clip_id) else
            AUDIO if media.get(clip_id) == "audio" else NONE for clip_id in clip_ids}


def thumbnail_url(clip_id: str) -> str:
    return f"/officer/thumbnail/{clip_id}"
