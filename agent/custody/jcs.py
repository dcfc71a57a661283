"""RFC 8785 JSON Canonicalization Scheme (JCS): one byte sequence per JSON value.

Manifests and custody log entries are hashed and signed over these bytes, so
any two conforming implementations (this one, an auditor's in another
language) must produce identical output.  Rules (RFC 8785 section 3.2):

- no whitespace between tokens;
- object members sorted by their names as arrays of UTF-16 code units,
  recursively; array order is kept;
- strings escape only ``"``, ``\\``, and U+0000..U+001F (``\\b \\t \\n \\f \\r``
  by name, the rest as ``\\u00xx`` in lowercase hex); everything else is
  written as UTF-8;
- numbers are written as ECMAScript's Number::toString writes the IEEE 754
  double (shortest round-trip digits, exponent form below 1e-6 and from 1e21).

Values outside the I-JSON data model are refused with ValueError naming the
value: NaN and infinities, integers beyond +/-2**53 (they would not survive
a double), strings that are not valid Unicode (lone surrogates).  Input types
are the ones ``json.loads`` produces: dict (str keys), list or tuple, str,
int, float, bool, None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_SAFE_INTEGER", "canonicalize", "number_to_string"]

#: Largest integer magnitude accepted as a Python int: beyond it, distinct ints
#: collapse to one double and two parties could disagree on the value signed.
MAX_SAFE_INTEGER = 2**53

_NAMED_ESCAPES = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}
_ESCAPES = {chr(c): f"\\u{c:04x}" for c in range(0x20)} | _NAMED_ESCAPES


def canonicalize(obj: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``obj``."""
    parts: list[str] = []
    _emit(obj, parts)
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start:exc.end]
        raise ValueError(
            f"string contains {bad!r} (a lone surrogate), which is not valid Unicode "
            "and cannot be canonicalized") from None


def _emit(obj: Any, out: list[str]) -> None:
    # bool is a subclass of int: test it first.
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, str):
        out.append(_string(obj))
    elif isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INTEGER:
            raise ValueError(
                f"integer {obj} is beyond +/-2**53 and cannot be represented exactly "
                "in canonical JSON (RFC 8785 numbers are IEEE 754 doubles)")
        out.append(str(int(obj)))
    elif isinstance(obj, float):
        out.append(number_to_string(obj))
    elif isinstance(obj, Mapping):
        _object(obj, out)
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _emit(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot canonicalize a value of type {type(obj).__name__}: {obj!r}")


def _object(obj: Mapping[Any, Any], out: list[str]) -> None:
    for key in obj:
        if not isinstance(key, str):
            raise TypeError(f"object member name {key!r} is a {type(key).__name__}, not a string")
    # UTF-16 big-endian bytes compare exactly as the sequence of UTF-16 code
    # units does, which is the order RFC 8785 section 3.2.3 prescribes (it
    # differs from code point order for characters above U+FFFF).
    keys = sorted(obj, key=_utf16_sort_key)
    out.append("{")
    for i, key in enumerate(keys):
        if i:
            out.append(",")
        out.append(_string(key))
        out.append(":")
        _emit(obj[key], out)
    out.append("}")


def _utf16_sort_key(key: str) -> bytes:
    try:
        return key.encode("utf-16-be")
    except UnicodeEncodeError:
        raise ValueError(
            f"object member name {key!r} contains a lone surrogate, which is not valid "
            "Unicode and cannot be canonicalized") from None


def _string(value: str) -> str:
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def number_to_string(value: float) -> str:
    """ECMAScript Number::toString of a finite double (ECMA-262 Number::toString, radix 10)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"number {value!r} is not finite; canonical JSON has no NaN or Infinity")
    if value == 0:
        return "0"  # also for -0.0, as ECMAScript prints it
    sign = "-" if value < 0 else ""
    digits, n = _shortest_digits(abs(value))
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        exp_text = ("+" if exponent >= 0 else "-") + str(abs(exponent))
        body = digits + "e" + exp_text if k == 1 else digits[0] + "." + digits[1:] + "e" + exp_text
    return sign + body


def _shortest_digits(value: float) -> tuple[str, int]:
    """Digits ``s`` (no leading/trailing zeros) and ``n`` with value = 0.s * 10**n.

    Python's repr() gives the shortest decimal that round-trips to the same
    double, choosing the closest one when several are as short, which is
    what ECMA-262 asks for; only the layout differs, so it is re-laid out.
    """
    text = repr(value)
    mantissa, _, exp_part = text.partition("e")
    exponent = int(exp_part) if exp_part else 0
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + exponent  # decimal point position relative to digits[0]
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point
