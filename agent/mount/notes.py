"""The notes the mount helper (root) and the daemon (the agent's user) leave in ``run_dir``.

``run_dir`` belongs to the agent's user.  File names are built from
validated kernel device names, random tokens and USB port paths only, never
from anything a device says; the root side writes with O_EXCL|O_NOFOLLOW
temp files renamed into place and reads with O_NOFOLLOW, so nothing the
daemon's user plants there (a symlink) makes root write or read elsewhere.

* ``<name>.json``  (helper) /dev/<name> is mounted: token, mount point, driver, identity;
* ``<name>.done``  (daemon) the station is done with the mount whose token it holds;
* ``refused-<name>-<token>.json``  (helper) a device it refused; the daemon logs it
  (``device.refused``) and deletes the note;
* ``msdc-<port>``  (daemon, gat947) a camera on USB port ``<port>`` (or ``any``) is
  switching to mass storage: its volume goes below the gat947 driver's mount_root.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.devicepolicy import Refusal, UsbIdentity
from agent.durable import write_atomic

KERNEL_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")
USB_PORT = re.compile(r"[0-9]{1,3}-[0-9]{1,3}(\.[0-9]{1,3}){0,6}")
TOKEN = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9A-Fa-f-]{0,36}")
_REFUSED = re.compile(r"refused-([a-z][a-z0-9]{0,31})-([0-9a-f]{32})\.json")
NOTE_MAX = 64 * 1024
MAX_REFUSALS = 64  # pending refusal notes; more are not written (a flood of plug-ins)
_TEXT_MAX = 512


def read_note(path: Path, limit: int = NOTE_MAX) -> bytes | None:
    """The bytes of regular file ``path`` (never through a symlink, at most ``limit``), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit + 1)  # one byte more: callers tell "too long" from "whole"
    finally:
        os.close(fd)


def drop_note(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass(frozen=True)
class MountNote:
    """What the helper says about a volume it mounted (``<name>.json``)."""

    name: str
    token: str
    device: str
    mount_point: str
    driver: str
    fstype: str
    method: str  # "kernel" or "fuse"
    identity: UsbIdentity | None
    uuid: str = ""  # the file system's volume id (blkid UUID), checked: hex digits and '-'

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "name": self.name, "token": self.token, "device": self.device,
            "mount_point": self.mount_point, "driver": self.driver, "fstype": self.fstype,
            "method": self.method, "uuid": self.uuid,
            "identity": self.identity.as_dict() if self.identity is not None else None}
        return json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")


def write_mounted(run_dir: Path, note: MountNote) -> None:
    drop_note(run_dir / f"{note.name}.done")  # a note for an earlier mount of this name
    write_atomic(run_dir / f"{note.name}.json", note.to_json(), mode=0o644)


def read_mounted(run_dir: Path, name: str) -> MountNote | None:
    """The helper's note for kernel name ``name``, or None if absent or malformed."""
    if not KERNEL_NAME.fullmatch(name):
        return None
    data = read_note(run_dir / f"{name}.json")
    if data is None or len(data) > NOTE_MAX:
        return None
    try:
        body = json.loads(data.decode("utf-8"))
        ident = body.get("identity")
        note = MountNote(
            name=_text(body, "name"), token=_text(body, "token"), device=_text(body, "device"),
            mount_point=_text(body, "mount_point"), driver=_text(body, "driver"),
            fstype=_text(body, "fstype"), method=_text(body, "method"),
            identity=_identity(ident) if ident is not None else None,
            uuid=_text(body, "uuid"))
    except (ValueError, TypeError, AttributeError):
        return None
    if note.name != name or not TOKEN.fullmatch(note.token) or not _UUID.fullmatch(note.uuid):
        return None
    return note


def write_done(run_dir: Path, name: str, token: str) -> None:
    """The daemon's word: the station is done with mount ``token`` of /dev/``name``."""
    if not KERNEL_NAME.fullmatch(name) or not TOKEN.fullmatch(token):
        raise ValueError(f"not a mount note: {name!r}")
    write_atomic(run_dir / f"{name}.done", token.encode("ascii"), mode=0o644)


def done_for(run_dir: Path, name: str, token: str) -> bool:
    """Whether the daemon said it is done with this very mount."""
    data = read_note(run_dir / f"{name}.done", limit=64)
    return data is not None and data.strip() == token.encode("ascii")


def clear(run_dir: Path, name: str) -> None:
    drop_note(run_dir / f"{name}.json")
    drop_note(run_dir / f"{name}.done")


# --- refusals ---------------------------------------------------------------------------------

def write_refusal(run_dir: Path, name: str, token: str, refusal: Refusal) -> bool:
    """Leave a refusal for the daemon to record; False when too many are pending already."""
    pending = sum(1 for n in os.listdir(run_dir) if _REFUSED.fullmatch(n))
    if pending >= MAX_REFUSALS:
        return False
    write_atomic(run_dir / f"refused-{name}-{token}.json", refusal.to_json().encode("utf-8"),
                 mode=0o644)
    return True


def pending_refusals(run_dir: Path) -> list[tuple[Path, Refusal | None]]:
    """Refusal notes waiting to be recorded, oldest first; None for a malformed note."""
    try:
        names = [n for n in os.listdir(run_dir) if _REFUSED.fullmatch(n)]
    except OSError:
        return []
    found: list[tuple[float, Path, Refusal | None]] = []
    for file_name in names:
        path = run_dir / file_name
        try:
            mtime = os.stat(path, follow_symlinks=False).st_mtime
            data = read_note(path)
        except OSError:
            continue
        if data is None:
            continue
        found.append((mtime, path, _refusal(data)))
    return [(path, refusal) for _, path, refusal in sorted(found, key=lambda f: (f[0], f[1]))]


def _refusal(data: bytes) -> Refusal | None:
    if len(data) > NOTE_MAX:
        return None
    try:
        body = json.loads(data.decode("utf-8"))
        facts = {k: _text(body, k) for k in ("device", "fstype") if k in body}
        return Refusal(identity=_identity(body), reason=_text(body, "reason"),
                       policy=_text(body, "policy"), driver=_text(body, "driver"),
                       handle=_text(body, "handle"), facts=facts)
    except (ValueError, TypeError, AttributeError):
        return None


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > _TEXT_MAX:
        raise ValueError(f"{key}: not a short string")
    return value


def _identity(body: dict[str, Any]) -> UsbIdentity:
    return UsbIdentity(usb_id=_text(body, "usb_id"), serial=_text(body, "serial"),
                       port=_text(body, "port"), manufacturer=_text(body, "manufacturer"),
                       product=_text(body, "product"))


# --- gat947: "this camera is switching to mass storage" -------------------------------------

def expect_msdc(run_dir: Path, port: str | None) -> None:
    """Say a gat947 camera on USB ``port`` (None: unknown port) is about to mount its storage."""
    key = port if port is not None and USB_PORT.fullmatch(port) else "any"
    write_atomic(run_dir / f"msdc-{key}", b"", mode=0o644)


def take_msdc(run_dir: Path, port: str | None, max_age_s: float) -> bool:
    """Whether a gat947 switch is expected for ``port`` (consumed); stale notes are removed."""
    keys = ["any"] if port is None or not USB_PORT.fullmatch(port) else [port, "any"]
    for key in keys:
        path = run_dir / f"msdc-{key}"
        try:
            written = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        drop_note(path)
        if stat.S_ISREG(written.st_mode) and 0 <= time.time() - written.st_mtime <= max_age_s:
            return True
    return False
