"""Running the probe in a child process, with a deadline and a memory limit.

FFmpeg parses camera files in C.  A hostile or broken file can make a
demuxer spin, allocate without end, or crash; inside the agent any of those
would stall or kill the daemon.  So each probe runs in a child process
(agent/media/child.py) that limits its own address space and CPU time before
it reads the file, and the parent kills it (its whole process group) at the
deadline.  The cost, measured by ``scripts/bench probe``: about 0.25 s of
process start and imports per clip (median; the probe itself takes 0.4 s on
a 6 s 720p clip and 6-11 s on a 1 GiB 1080p clip), against seconds of
copying per clip.  In-process, neither the deadline nor the memory limit
could be enforced: FFmpeg's C code does not yield to Python.

The child gets the file as an inherited descriptor opened here without
following symlinks, never its path or name.  Its output is read from a
temporary file (bounded by the child's RLIMIT_FSIZE) and checked against
the shape of the ``media`` object before it is believed (agent/media/facts.py),
and its thumbnail, when one was asked for, against the shape of a small JPEG
(agent/media/thumbnail.py); a thumbnail refused leaves the facts as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import StoreError
from agent.media import facts, thumbnail

log = logging.getLogger("agent.media")
ffmpeg_log = logging.getLogger("agent.media.ffmpeg")

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the agent package
_READ_LIMIT = 4 * 1024 * 1024
_STDERR_SHOWN = 2000


@dataclass(frozen=True)
class Limits:
    """How far one probe may go.  ``deadline_s`` is for the whole file."""

    deadline_s: float
    memory_mib: int
    decode: bool = True
    full_decode_bytes: int = 64 * 1024 * 1024
    samples: int = 7
    thumbnail: bool = False  # also make the first picture small (not part of the facts)


def run(path: Path, limits: Limits, *, clip_id: str | None = None,
        name: str | None = None) -> facts.MediaInfo:
    """Probe ``path`` in a child process; never raises for the file's content.

    Raises StoreError only if the vault file itself cannot be opened or the probe's
    process cannot run (its temporary files, a process to start: the station's side).
    """
    label = f"clip {clip_id or '-'} ({name or Path(path).name})"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot open vault file {path}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"vault file {path} is not a regular file")
        size = st.st_size
        if size == 0:
            return facts.empty()
        request = {"fd": fd, "decode": limits.decode, "deadline_s": limits.deadline_s,
                   "memory_mib": limits.memory_mib,
                   "full_decode_bytes": limits.full_decode_bytes, "samples": limits.samples,
                   "thumbnail": limits.thumbnail}
        try:
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                outcome = _spawn(request, fd, out, err, limits.deadline_s)
                output, errors = _head(out), _head(err).decode("utf-8", "replace")
        except OSError as exc:  # no room for its output, no process to spare: the station's
            raise StoreError(f"the media probe of {label} could not run: "
                             f"{exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if errors.strip():
        ffmpeg_log.debug("%s: probe stderr: %s", label, errors[-_STDERR_SHOWN:])
    if outcome != "ok":
        log.warning("%s: media probe failed: %s", label, outcome)
        return facts.unchecked(size, outcome, limits)
    try:
        result = json.loads(output)
        info = facts.from_child(result["media"], result.get("versions"), limits)
        _log_ffmpeg(label, result.get("log"), result.get("log_dropped"))
    except (ValueError, TypeError, KeyError, facts.MalformedFacts) as exc:
        log.warning("%s: media probe output refused: %s", label, exc)
        return facts.unchecked(size, f"the probe's output is malformed ({exc})", limits)
    if limits.thumbnail:
        return dataclasses.replace(info, thumbnail=_thumbnail(label, result))
    return info


def _thumbnail(label: str, result: dict[str, Any]) -> thumbnail.Thumbnail | None:
    """The child's thumbnail once checked; None if it made none or sent a malformed one."""
    value = result.get("thumbnail")
    if value is None:
        note = result.get("thumbnail_note")
        log.debug("%s: no thumbnail: %s", label, str(note)[:thumbnail.MAX_NOTE])
        return None
    try:
        return thumbnail.accept(value)
    except thumbnail.MalformedThumbnail as exc:
        log.warning("%s: the probe's thumbnail refused: %s", label, exc)
        return None


def _spawn(request: dict[str, Any], fd: int, out: Any, err: Any, deadline_s: float, *,
           argv: list[str] | None = None, grace_s: float = 5.0) -> str:
    """Run the child; "ok" or why it did not finish.

    The child stops itself at 80 % of ``deadline_s`` to report what it saw; the
    parent kills it ``grace_s`` after the deadline (a C loop that never returns).
    """
    proc = subprocess.Popen(
        argv or [sys.executable, "-m", "agent.media.child", json.dumps(request)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(fd,), cwd=ROOT,
        start_new_session=True)  # its own process group: killed whole at the deadline
    try:
        code = proc.wait(timeout=deadline_s + grace_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return f"probe_timeout: the probe did not finish within {deadline_s:g} s and was killed"
    except BaseException:
        _kill(proc)  # the agent is stopping: leave no probe behind
        raise
    if code == 0:
        return "ok"
    if code < 0:
        return f"probe_failed: the probe process died of signal {signal.Signals(-code).name}"
    return f"probe_failed: the probe process exited with status {code}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _head(f: Any) -> bytes:
    f.seek(0)
    data: bytes = f.read(_READ_LIMIT)
    return data


def _log_ffmpeg(label: str, lines: Any, dropped: Any) -> None:
    """FFmpeg's own lines, through the agent's log at debug level, with the clip named."""
    if not isinstance(lines, list):
        return
    for line in lines[:500]:
        if isinstance(line, list) and len(line) == 3:
            ffmpeg_log.debug("%s: [%s] %s", label, str(line[1])[:64], str(line[2])[:300])
    if isinstance(dropped, int) and dropped > 0:
        ffmpeg_log.debug("%s: %d more FFmpeg log lines not kept", label, dropped)
