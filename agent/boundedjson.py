"""JSON from outside the station (platform messages, bundles under audit), parsed within bounds.

``json.loads`` alone is not safe on hostile input: it recurses once per
nesting level (a 100,000-deep ``[[[...`` raises RecursionError), converts a
100,000-digit number only to fail with a ValueError deep inside, accepts
``NaN`` and ``Infinity``, keeps the last of duplicate object keys (two
readers of the same bytes may then disagree on a signed value), and
guesses UTF-16/32 from bytes.  ``loads`` here:

- refuses input longer than ``max_bytes`` before looking at it;
- decodes UTF-8 strictly;
- measures the nesting depth iteratively (a scan of the structural
  characters, strings skipped) and refuses more than ``max_depth`` before
  the parser ever recurses;
- refuses numbers longer than ``MAX_NUMBER_CHARS`` characters, NaN and
  infinities, and duplicate keys in an object.

Every refusal is a :class:`JSONInputError` (a ValueError) whose text says
what was wrong; nothing else escapes for any input.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_NUMBER_CHARS", "JSONInputError", "loads", "nesting_depth"]

#: Longest number accepted, in characters: every number the station writes is far
#: shorter (sizes and counts below 2**53, times as strings).
MAX_NUMBER_CHARS = 40

# Structural characters and escapes: a backslash takes the next character with it,
# so an escaped quote never ends a string.
_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)


class JSONInputError(ValueError):
    """Input that is not acceptable JSON, or exceeds a bound; the text says which."""


def nesting_depth(data: bytes, limit: int) -> int:
    """Deepest nesting of arrays/objects in ``data``, scanning iteratively.

    Stops as soon as ``limit`` is exceeded (returning ``limit + 1``); does
    not check that the JSON is otherwise well formed.
    """
    depth = deepest = 0
    in_string = False
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or token[:1] == b"\\":
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def _number(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONInputError(f"a number of {len(text)} characters (at most "
                             f"{MAX_NUMBER_CHARS} are accepted)")
    return text


def _int(text: str) -> int:
    return int(_number(text))


def _float(text: str) -> float:
    return float(_number(text))


def _constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONInputError(f"object key {key[:60]!r} appears more than once")
        result[key] = value
    return result


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = 32) -> Any:
    """The JSON value in ``data``; JSONInputError for anything unacceptable (see module doc)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JSONInputError(f"{len(raw)} bytes, more than the {max_bytes} accepted")
    if nesting_depth(raw, max_depth) > max_depth:
        raise JSONInputError(f"nested deeper than {max_depth} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONInputError(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant,
                          object_pairs_hook=_object)
    except JSONInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                             ) from None
    except (ValueError, RecursionError, OverflowError) as exc:
        # Belt and braces: the bounds above should make these unreachable.
        raise JSONInputError(f"not acceptable JSON: {type(exc).__name__}") from None
