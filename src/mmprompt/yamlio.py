"""Reading YAML configs safely: a size limit, an alias-expansion limit, duplicate keys an error.

``yaml.safe_load`` builds no Python objects, but it still accepts a "billion laughs" (nine levels of ten
aliases each, a few hundred bytes that expand to 10^9 values the first time anything walks them), silently
keeps the last of two equal keys, and reads a file of any size. :func:`read_yaml` refuses all three, and
says which file and line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError, excerpt

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_NODES", "YAML_FLOAT", "load_yaml_text", "read_yaml"]

YAML_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")
"""``1e-3`` and ``5E4``: floats, as most people expect, although YAML 1.1 reads them as strings."""

MAX_YAML_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused unread: presets are a few hundred bytes."""
MAX_YAML_NODES = 100_000
"""Values a config may expand to once its aliases are followed (a "billion laughs" expands to 10^9)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with duplicate keys an error and ``1e-3`` a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise ConfigError(f"line {line}: the key {excerpt(key, 40)} is given twice (first on line "
                                      f"{seen[key]}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML_FLOAT, list("-+0123456789."))


def _expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` holds with every shared (aliased) part counted each time it appears."""
    memo: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, (list, dict)):
            return 1
        if id(v) in memo:
            return memo[id(v)]
        memo[id(v)] = 1  # a recursive alias counts once
        items = list(v.values()) + list(v.keys()) if isinstance(v, dict) else v
        total = 1
        for item in items:
            total += size(item)
            if total > limit:
                break
        memo[id(v)] = total
        return total

    return size(value)


def load_yaml_text(text: str, where: str) -> Any:
    """Parse YAML safely: no Python objects, duplicate keys an error, and aliases that would expand to more
    than :data:`MAX_YAML_NODES` values refused. Errors are :class:`ConfigError` starting with ``where``."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({excerpt(str(exc), 300)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    if _expanded_size(value, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(f"{where}: its aliases (&name / *name) expand to more than {MAX_YAML_NODES:,} values "
                          "(a 'billion laughs' file?); write the values out")
    return value


def read_yaml(path: str | Path) -> Any:
    """A YAML file read with :func:`load_yaml_text`, refused when it is larger than :data:`MAX_YAML_BYTES`,
    not a regular file, or not UTF-8 (each a :class:`ConfigError` naming the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ConfigError(f"{path}: not a regular file")
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is too large for a config (at most {MAX_YAML_BYTES:,})")
        data = path.read_bytes()[: MAX_YAML_BYTES + 1]
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: a config must be UTF-8 text; byte {exc.start} is not "
                          f"({data[exc.start:exc.start + 1]!r})") from None
    return load_yaml_text(text, str(path))
