"""A small validator that turns TOML tables into typed, frozen dataclasses.

Every section of the configuration is a dataclass whose fields carry their
constraints in ``field(metadata=...)`` via :func:`option`.  Loading reports
*every* problem, each naming its key path (``platform.upload_url``), rather
than stopping at the first: IT staff fix a file in one pass.
Unknown keys are errors, so a typo is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    doc: str = "",
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[str] | None = None,
    pattern: str | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """Declare a config key with its default and constraints."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "pattern": pattern}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if tp is Path:
        return "path (string)"
    if tp is float:
        return "number"
    if tp is int:
        return "integer"
    if tp is bool:
        return "boolean"
    if tp is str:
        return "string"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, problems)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return None
        return [_convert(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a table, got {type(value).__name__}")
            return None
        return load_section(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a boolean, got {value!r}")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected a number, got {value!r}")
            return None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
            return None
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{path}: expected a path (non-empty string), got {value!r}")
            return None
        return Path(value)
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def load_section(cls: type[T], raw: dict[str, Any], path: str, problems: list[str]) -> T:
    """Build ``cls`` from ``raw``, appending every problem (with its key path) to ``problems``."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key in raw:
        if key not in known:
            hint = ", ".join(sorted(known)) or "no keys"
            problems.append(f"{prefix}{key}: unknown key (allowed here: {hint})")
    broken = False
    for name, fld in known.items():
        key_path = f"{prefix}{name}"
        if name not in raw:
            if fld.default is _MISSING and fld.default_factory is _MISSING:
                problems.append(f"{key_path}: required key is missing")
                broken = True
            continue
        before = len(problems)
        value = _convert(raw[name], hints[name], key_path, problems)
        if len(problems) > before:
            broken = True
            continue
        meta = fld.metadata
        if isinstance(value, int | float) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and value < lo:
                problems.append(f"{key_path}: {value!r} is below the minimum {lo}")
                broken = True
            if hi is not None and value > hi:
                problems.append(f"{key_path}: {value!r} is above the maximum {hi}")
                broken = True
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            problems.append(f"{key_path}: {value!r} is not one of {allowed}")
            broken = True
        pattern = meta.get("pattern")
        if pattern is not None and isinstance(value, str) and not re.fullmatch(pattern, value):
            problems.append(f"{key_path}: {value!r} does not match the pattern {pattern}")
            broken = True
        values[name] = value
    if broken:
        # Fill the gaps with defaults where possible so validation can continue.
        for name, fld in known.items():
            if name in values:
                continue
            if fld.default is not _MISSING:
                values[name] = fld.default
            elif fld.default_factory is not _MISSING:
                values[name] = fld.default_factory()
            else:
                values[name] = None
    return cls(**values)


def describe(cls: type[Any], path: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, doc) for every key of ``cls``: used to check the example file."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        key_path = f"{path}.{fld.name}" if path else fld.name
        tp = hints[fld.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key_path))  # type: ignore[arg-type]
            continue
        if fld.default is not _MISSING:
            default = repr(fld.default)
        elif fld.default_factory is not _MISSING:
            default = repr(fld.default_factory())
        else:
            default = "(required)"
        rows.append((key_path, default, fld.metadata.get("doc", "")))
    return rows
