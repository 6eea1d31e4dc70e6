"""Checks of config values, one place for all of them: the run config's sections and every method's options.

Each check names the field (``optim.epochs``, ``mma.adapter_dim``) and says what was expected and a short
excerpt of what it got (:func:`excerpt`, never a whole long value); a bool is never taken for a number
(YAML's ``true`` is not ``1``), a string is never taken for a bool (``"no"`` is not false), and a number
must be finite. :func:`check_fields` checks every given field of a config dataclass against its type
annotation before the dataclass is built.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

__all__ = ["ConfigError", "check_bool", "check_fields", "check_int", "check_number", "check_type", "excerpt",
           "is_number"]

EXCERPT_CHARS = 60
"""How much of a wrong value a message shows."""


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said (a message never holds a whole
    3000-character value)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class ConfigError(ValueError):
    """A config value is invalid or a key is unknown; the message names the key."""


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(minimum: float | None, above: float | None, maximum: float | None) -> str:
    parts = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
             f"<= {maximum:g}" if maximum is not None else ""]
    return " and ".join(p for p in parts if p)


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an integer (>= ``minimum``), else a :class:`ConfigError` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be an integer{bound}, got {excerpt(value)}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    """``float(value)`` if it is a finite number within the bounds (``above``: strictly greater), else a
    :class:`ConfigError` naming ``name``."""
    ok = is_number(value) and math.isfinite(value)
    if ok and ((minimum is not None and value < minimum) or (above is not None and value <= above)
               or (maximum is not None and value > maximum)):
        ok = False
    if not ok:
        what = "a positive number" if above == 0 and minimum is None and maximum is None else (
            f"a number {_bounds(minimum, above, maximum)}".rstrip())
        raise ConfigError(f"{name} must be {what}, got {excerpt(value)}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is true or false (not 0/1 or a string), else a :class:`ConfigError` naming ``name``."""
    if not isinstance(value, bool):
        hint = " (a quoted string; write true or false without quotes)" if isinstance(value, str) else ""
        raise ConfigError(f"{name} must be true or false, got {excerpt(value)}{hint}")
    return value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", tuple: "a list", dict: "a mapping", Mapping: "a mapping"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return is_number(value) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in args:
            return len(value) == len(items) and all(_matches(v, a) for v, a in zip(value, items, strict=True))
        return not items or all(_matches(v, items[0]) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return True  # a type this check does not know: left to the class's own checks


def check_type(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits the type annotation ``hint`` (strict: no bool for a number, no string for a
    bool), else a :class:`ConfigError` naming ``name``, what was expected and an excerpt of the value."""
    if not _matches(value, hint):
        hint_text = " (a quoted string; write true or false without quotes)" if (
            isinstance(value, str) and "true or false" in _describe(hint)) else ""
        raise ConfigError(f"{name} must be {_describe(hint)}, got {excerpt(value)}{hint_text}")
    return value


def check_fields(cls: type, values: Mapping[str, Any], prefix: str = "") -> None:
    """Check each value of ``values`` against the annotation of the same field of dataclass ``cls`` (fields
    that are not there, or whose annotation cannot be resolved, are left to the caller)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation naming a type-checking-only import: no type check
        return
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(hints)
    for key, value in values.items():
        if key in fields and key in hints:
            check_type(f"{prefix}{key}", value, hints[key])
