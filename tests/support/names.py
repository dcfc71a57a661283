"""Device names as an independent verifier reads them (docs/FORMATS.md section 1)."""

from __future__ import annotations

import re


def name_bytes(stored: str, flags: tuple[str, ...]) -> bytes:
    """A device name's bytes from its stored form: ``%XX`` is a byte, the rest is text
    in GBK (flag ``name.gbk``) or UTF-8."""
    encoding = "gbk" if "name.gbk" in flags else "utf-8"
    out = b""
    for literal, escape in re.findall(r"([^%]*)(%[0-9A-F]{2})?", stored):
        out += literal.encode(encoding) + (bytes.fromhex(escape[1:]) if escape else b"")
    return out
