"""The thumbnails beside the vault: one small JPEG per clip, for the officer at the station screen.

Layout below ``<data_dir>``::

    thumbs/<clip_id>.jpg   the first picture of a clip (agent/media/thumbnail.py), 0600

A thumbnail is not evidence: it is not in the manifest, not signed, not
uploaded, not exported, not verified; losing one loses nothing (the screen
shows a placeholder).  It is made by the media probe's child process and
checked there and here (one JPEG of at most 320x180 and 48 KiB), written
durably (agent/durable.py), and removed when its clip is purged from the
vault (agent/sync/retention.py).  Names come only from clip ids the station
gave (UUIDs), never from a device or a request without that check.

Only stations that show thumbnails make them: the pages are served and
officers can sign in at them (:func:`wanted`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from pathlib import Path

from agent.config import Config
from agent.durable import fsync_dir, makedirs_durable, write_atomic
from agent.media.thumbnail import MAX_BYTES, MalformedThumbnail, check

log = logging.getLogger(__name__)

CLIP_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def wanted(config: Config) -> bool:
    """Whether this station shows thumbnails: its pages are served and officers sign in there."""
    return (config.web is not None and config.web.enabled
            and config.custody.credential_key_file is not None)


class Thumbnails:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "thumbs"

    def path(self, clip_id: str) -> Path:
        if CLIP_ID.fullmatch(clip_id) is None:
            raise ValueError(f"not a clip id: {clip_id[:40]!r}")
        return self.root / f"{clip_id}.jpg"

    def save(self, clip_id: str, jpeg: bytes) -> bool:
        """Keep the clip's thumbnail (checked again first); False, logged, if it cannot be.

        A full disk or a bad thumbnail never stops a clip: it only has no picture.
        """
        try:
            check(jpeg)
            makedirs_durable(self.root, mode=0o700)
            write_atomic(self.path(clip_id), jpeg, mode=0o600)
        except (OSError, ValueError) as exc:
            log.warning("clip %s: thumbnail not kept: %s", clip_id, exc)
            return False
        return True

    def read(self, clip_id: str) -> bytes | None:
        """The clip's thumbnail, or None: none kept, or what is there is not one (logged)."""
        try:
            path = self.path(clip_id)
        except ValueError:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("thumbnail %s cannot be read: %s", path, exc.strerror)
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                log.warning("thumbnail %s is not a regular file", path)
                return None
            data = os.read(fd, MAX_BYTES + 1)
        except OSError as exc:
            log.warning("thumbnail %s cannot be read: %s", path, exc.strerror)
            return None
        finally:
            os.close(fd)
        try:
            check(data)
        except MalformedThumbnail as exc:
            log.warning("thumbnail %s refused: %s", path, exc)
            return None
        return data

    def has(self, clip_id: str) -> bool:
        try:
            return self.path(clip_id).is_file()
        except ValueError:
            return False

    def discard(self, clip_id: str) -> None:
        """Delete the clip's thumbnail, if it has one (idempotent)."""
        try:
            path = self.path(clip_id)
        except ValueError:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:  # never in the way of a purge
            log.warning("thumbnail %s not removed: %s", path, exc.strerror)
            return
        with contextlib.suppress(OSError):
            fsync_dir(self.root)
