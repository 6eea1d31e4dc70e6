"""Checks of config values, one place for all of them: the run config's sections and every method's options.

Each check names the field (``optim.epochs``, ``mma.adapter_dim``) and says what was expected and what it
got; a bool is never taken for a number (YAML's ``true`` is not ``1``), and a number must be finite.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ConfigError", "check_bool", "check_int", "check_number", "is_number"]


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
        raise ConfigError(f"{name} must be an integer{bound}, got {value!r}")
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
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is true or false (not 0/1 or a string), else a :class:`ConfigError` naming ``name``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value
