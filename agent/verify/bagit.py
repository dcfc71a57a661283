"""BagIt 1.0 (RFC 8493) manifests and tag files: writing and checking.

Manifest lines are ``<lowercase hex digest>  <path>`` (two spaces), which is
also the format ``sha256sum -c`` reads.  Paths are relative, ``/``-separated,
and percent-encode only CR, LF and ``%`` (RFC 8493 section 2.1.3); the
exporter never writes names that need it, the reader decodes them anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from agent.verify.layout import BAGIT_TXT_CONTENT

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def encode_path(path: str) -> str:
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


_ESCAPED = re.compile(r"%(0[dDaA]|25)")
_UNESCAPE = {"0d": "\r", "0a": "\n", "25": "%"}


def decode_path(path: str) -> str:
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1).lower()], path)


def manifest_text(items: Iterable[tuple[str, str]]) -> str:
    """Manifest lines for ``(relative path, sha256 hex)`` pairs, sorted by path."""
    return "".join(f"{digest}  {encode_path(path)}\n" for path, digest in sorted(items))


def parse_manifest(text: str, name: str) -> tuple[dict[str, str], list[str]]:
    """``{path: digest}`` from a manifest, and every malformed or unsafe line as a problem."""
    entries: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, _, rest = line.partition(" ")
        path = decode_path(rest.lstrip(" \t").removeprefix("*"))
        where = f"{name} line {number}"
        if not _HEX64.fullmatch(digest) or not path:
            problems.append(f"bag-format: {where} is not '<sha256 hex>  <path>': {line[:120]!r}")
            continue
        if not is_safe_relative(path):
            problems.append(f"bag-format: {where} names an unsafe path {path!r} "
                            "(absolute, '..', or empty component)")
            continue
        if path in entries:
            problems.append(f"bag-format: {where} lists {path} a second time")
            continue
        entries[path] = digest.lower()
    return entries, problems


def is_safe_relative(path: str) -> bool:
    pure = PurePosixPath(path)
    return (not pure.is_absolute() and "\\" not in path
            and all(part not in ("", ".", "..") for part in path.split("/")))


def parse_bag_info(text: str) -> dict[str, list[str]]:
    """Labels to values; a label may repeat, and indented lines continue the value before."""
    info: dict[str, list[str]] = {}
    last: str | None = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and last is not None:
            info[last][-1] += " " + line.strip()
            continue
        label, sep, value = line.partition(":")
        if not sep:
            continue
        last = label.strip()
        info.setdefault(last, []).append(value.strip())
    return info


def bag_info_text(fields: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{label}: {value}\n" for label, value in fields)


def bagit_txt_problems(text: str | None) -> list[str]:
    if text is None:
        return ["bag-missing: bagit.txt is missing (not a BagIt bag)"]
    info = parse_bag_info(text)
    problems = []
    if info.get("BagIt-Version") != ["1.0"]:
        problems.append(f"bag-format: bagit.txt declares BagIt-Version {info.get('BagIt-Version')}"
                        ", expected 1.0")
    if [v.upper() for v in info.get("Tag-File-Character-Encoding", [])] != ["UTF-8"]:
        problems.append("bag-format: bagit.txt does not declare Tag-File-Character-Encoding: "
                        "UTF-8")
    return problems


def payload_oxum(octets: int, files: int) -> str:
    return f"{octets}.{files}"


__all__ = ["BAGIT_TXT_CONTENT", "bag_info_text", "bagit_txt_problems", "decode_path",
           "encode_path", "is_safe_relative", "manifest_text", "parse_bag_info",
           "parse_manifest", "payload_oxum"]
