"""The shipped unit's process hardening, reproduced without systemd as PID 1.

There is no systemd here to start the unit, so the knobs that act on the
process itself are applied by hand, as systemd applies them, before the
agent is exec'd:

* ``SystemCallFilter=`` / ``SystemCallErrorNumber=``: a seccomp filter made
  with libseccomp (the library systemd uses), from the very syscall sets
  ``systemd-analyze syscall-filter`` prints for the unit's groups;
* ``SystemCallArchitectures=native``: libseccomp's filter only admits the
  native architecture;
* ``RestrictAddressFamilies=``: ``socket()`` allowed only for those families;
* ``MemoryDenyWriteExecute=yes``: the kernel's own switch for it,
  ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` (Linux 6.3+), which
  systemd uses where the kernel has it;
* ``NoNewPrivileges=yes`` and ``UMask=``.

The mount-namespace knobs (``ProtectSystem=``, ``PrivateTmp=``, ...) and
the device ACL need PID 1 and are not reproduced.

Run as a program: ``python -m tests.support.hardening UNIT -- ARGV...``
applies the unit's knobs to itself and execs ARGV.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def directives(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit's [Service] section, values in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@cache
def _group(name: str) -> frozenset[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    names: set[str] = set()
    for raw in out.splitlines()[1:]:
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        names |= _group(item) if item.startswith("@") else {item}
    return frozenset(names)


def allowed_syscalls(filters: list[str]) -> set[str]:
    """The syscalls the unit's ``SystemCallFilter=`` lines allow (allow list, then denials)."""
    allowed: set[str] = set()
    for value in filters:
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= _group(item) if item.startswith("@") else {item}
        if deny:
            allowed -= names
        else:
            allowed |= names
    return allowed


def apply(unit: Path) -> None:
    """Apply the unit's process knobs to this process (see the module docstring)."""
    knobs = directives(unit)
    os.umask(int(knobs.get("UMask", ["0022"])[-1], 8))
    libc = ctypes.CDLL(None, use_errno=True)
    if (knobs.get("NoNewPrivileges", ["no"])[-1] == "yes"
            and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0):
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if (knobs.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
            and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0):
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (Linux 6.3+)")
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    code = getattr(errno, knobs.get("SystemCallErrorNumber", ["EPERM"])[-1])
    ctx = lib.seccomp_init(scmp_act_errno(code))
    families = [getattr(socket, f) for value in knobs.get("RestrictAddressFamilies", [])
                for f in value.split()]
    for name in sorted(allowed_syscalls(knobs.get("SystemCallFilter", []))):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # not a syscall of this architecture
        if name == "socket" and families:
            for family in families:
                cmp = (_ArgCmp * 1)(_ArgCmp(0, SCMP_CMP_EQ, int(family), 0))
                if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 1, cmp) != 0:
                    raise OSError(f"seccomp rule for socket({family})")
            continue
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None) != 0:
            raise OSError(f"seccomp rule for {name}")
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    apply(Path(argv[0]))
    program = argv[split + 1:]
    os.execv(program[0], program)


def family_check() -> str:
    """For the tests: which socket families this process may open."""
    result = []
    for name in ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
        try:
            socket.socket(getattr(socket, name), socket.SOCK_DGRAM).close()
            result.append(f"{name}=ok")
        except OSError as exc:
            result.append(f"{name}={errno.errorcode.get(exc.errno or 0, exc.errno)}")
    return " ".join(result)


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["allowed_syscalls", "apply", "directives", "family_check"]
