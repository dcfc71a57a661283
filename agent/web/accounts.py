"""IT accounts of the station's pages: a JSON file of names and scrypt password hashes.

The file is made and changed by ``bwc-agent web user add|remove`` and read
by the web server at every sign-in (so an account removed on the command
line cannot sign in any more, without a restart).  It holds no password,
only scrypt hashes (RFC 7914; N=2^15, r=8, p=1, a 16-byte random salt per
account), and must be mode 0600 or stricter: the web server refuses a
file that group or others can read or write.

Format (``bwc.web-users/v1``)::

    {"schema": "bwc.web-users/v1",
     "users": {"alice": {"scrypt": "<N>$<r>$<p>$<salt b64>$<hash b64>",
                         "created_at": "2026-11-28T01:02:03.456Z"}}}
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from agent.durable import write_atomic
from agent.errors import ConfigError
from agent.timeutil import now

SCHEMA = "bwc.web-users/v1"
USER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # scrypt cost is per byte of nothing, but a bound keeps requests small
MAX_FILE_BYTES = 1024 * 1024
# N=2^15, r=8: 32 MiB and ~0.1 s per check on a station CPU; the sign-in rate limit
# bounds how often an attacker can make the station pay that.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


class AccountError(ConfigError):
    """The account file or a name or password given for it is not acceptable."""


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32,
                          maxmem=_MAXMEM)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return (f"{SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}")


def check_password(password: str, encoded: str) -> bool:
    try:
        n_s, r_s, p_s, salt_s, digest_s = encoded.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, digest = base64.b64decode(salt_s), base64.b64decode(digest_s)
    except ValueError:
        return False
    if not (2**10 <= n <= 2**17 and 1 <= r <= 16 and 1 <= p <= 4):
        return False  # a file edited to make every sign-in cost minutes, or nothing
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


@functools.cache
def _dummy() -> str:
    """Checked when the name is unknown: a wrong name costs what a wrong password costs."""
    return hash_password(secrets.token_hex(16))


def check_name(name: str) -> None:
    if not re.fullmatch(USER_PATTERN, name):
        raise AccountError(f"account name {name!r} is not allowed: 1 to 32 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password is too long: at most {MAX_PASSWORD} characters")


class Accounts:
    """The account file at ``path`` (read afresh at every check; small and rarely used)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self, *, missing_ok: bool) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if missing_ok:
                return {"schema": SCHEMA, "users": {}}
            raise AccountError(f"{self.path}: no IT accounts yet; add one with "
                               "`bwc-agent web user add NAME --config ...`") from None
        except OSError as exc:
            raise AccountError(f"{self.path}: cannot read the IT accounts: "
                               f"{exc.strerror}") from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise AccountError(f"{self.path} is open to group or others (mode {mode:04o}); "
                                   f"run chmod 600 {self.path}")
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise AccountError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AccountError(f"{self.path}: not valid JSON ({exc})") from exc
        if (not isinstance(doc, dict) or doc.get("schema") != SCHEMA
                or not isinstance(doc.get("users"), dict)):
            raise AccountError(f"{self.path}: not a {SCHEMA} account file")
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text.encode("utf-8"), mode=0o600)
        except OSError as exc:
            raise AccountError(f"{self.path}: cannot write the IT accounts: "
                               f"{exc.strerror}") from exc

    def names(self) -> list[str]:
        return sorted(self._read(missing_ok=True)["users"])

    def check(self) -> int:
        """Raise AccountError if the file is unusable; the number of accounts."""
        return len(self._read(missing_ok=False)["users"])

    def add(self, name: str, password: str, *, replace: bool = False) -> None:
        check_name(name)
        check_new_password(password)
        doc = self._read(missing_ok=True)
        if name in doc["users"] and not replace:
            raise AccountError(f"account {name!r} exists; use `web user passwd` to change "
                               "its password")
        doc["users"][name] = {"scrypt": hash_password(password), "created_at": now()}
        self._write(doc)

    def revoke(self, name: str) -> None:
        """Take the account out of the file: it cannot sign in any more."""
        doc = self._read(missing_ok=False)
        if doc["users"].pop(name, None) is None:
            raise AccountError(f"no account {name!r} in {self.path}")
        self._write(doc)

    def verify(self, name: str, password: str) -> bool:
        """Whether ``name`` exists and ``password`` is its password (constant work either way)."""
        users = self._read(missing_ok=True)["users"]
        entry = users.get(name) if re.fullmatch(USER_PATTERN, name) else None
        encoded = entry.get("scrypt") if isinstance(entry, dict) else None
        if not isinstance(encoded, str) or len(password) > MAX_PASSWORD:
            check_password(password[:MAX_PASSWORD], _dummy())
            return False
        return check_password(password, encoded)


def users_path(config: Any) -> Path:
    """The account file: ``web.users_file`` or ``<data_dir>/web-users.json``."""
    web = config.web
    if web is not None and web.users_file is not None:
        return Path(web.users_file)
    return Path(config.data_dir) / "web-users.json"
