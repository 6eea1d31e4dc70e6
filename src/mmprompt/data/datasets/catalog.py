"""Read ``catalog.yaml``, the declaration of the benchmark's datasets, into :class:`DatasetInfo` objects.

Every entry is validated: a missing or unknown field, a value of the wrong type, an unknown reader or
reader argument raises :class:`CatalogError` naming the file, the dataset and the field.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mmprompt.data.datasets._base import DatasetInfo, Requirement
from mmprompt.data.datasets.readers import READERS

__all__ = ["CATALOG_FILE", "CatalogError", "load_catalog", "parse_catalog"]

CATALOG_FILE = "catalog.yaml"

# field -> (expected type(s), required, words for the error message)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool, str]] = {
    "key": (str, True, "a string"),
    "coop_name": (str, True, "a string"),
    "display_name": (str, False, "a string"),
    "folder": (str, True, "a string"),
    "image_subdir": (str, True, 'a string ("" for the dataset folder itself)'),
    "num_classes": (int, True, "a positive integer"),
    "download": (str, True, "a string"),
    "split_file": (str, False, "a file name"),
    "requirements": (list, False, "a list of {path, kind, what, needed}"),
    "aliases": (list, False, "a list of strings"),
    "val_is_test": (bool, False, "true or false"),
    "test_only": (bool, False, "true or false"),
    "reader": (dict, True, "a mapping {name: <reader>, <argument>: <value>...}"),
}
_REQUIREMENT_FIELDS = {"path": True, "kind": True, "what": True, "needed": False}
_KINDS = ("file", "dir")
_NEEDED = ("always", "no_split")


class CatalogError(ValueError):
    """``catalog.yaml`` (or a catalogue given to :func:`parse_catalog`) is malformed."""


def load_catalog(path: str | Path | None = None) -> dict[str, DatasetInfo]:
    """The datasets of ``path`` (default: the packaged ``catalog.yaml``), by key, in file order."""
    if path is None:
        source = resources.files("mmprompt.data.datasets").joinpath(CATALOG_FILE)
        return parse_catalog(source.read_text(encoding="utf-8"), CATALOG_FILE)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogError(f"{path}: cannot read the dataset catalogue ({e})") from None
    return parse_catalog(text, str(path))


def parse_catalog(text: str, source: str = CATALOG_FILE) -> dict[str, DatasetInfo]:
    """The datasets of a catalogue's YAML ``text``; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"{source}: not valid YAML ({e})") from None
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: expected a top-level 'datasets:' list of dataset entries")
    out: dict[str, DatasetInfo] = {}
    for i, entry in enumerate(entries, 1):
        key = entry.get("key") if isinstance(entry, dict) else None
        info = _parse_entry(entry, f"{source}, dataset {key!r}" if isinstance(key, str) else f"{source}, dataset #{i}")
        if info.key in out:
            raise CatalogError(f"{source}, dataset {info.key!r}: field 'key': {info.key!r} is declared twice")
        out[info.key] = info
    return out


def _parse_entry(entry: Any, where: str) -> DatasetInfo:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a mapping of fields, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_FIELDS), key=str)
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {unknown}; known fields: {', '.join(_FIELDS)}")
    for name, (kind, required, words) in _FIELDS.items():
        if name not in entry:
            if required:
                raise CatalogError(f"{where}: missing field {name!r} ({words})")
            continue
        value = entry[name]
        wrong_type = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong_type or (name == "num_classes" and value <= 0):
            raise CatalogError(f"{where}: field {name!r}: expected {words}, got {value!r}")
    aliases = entry.get("aliases", [])
    if not all(isinstance(a, str) for a in aliases):
        raise CatalogError(f"{where}: field 'aliases': expected a list of strings, got {aliases!r}")
    requirements = tuple(
        _parse_requirement(r, f"{where}: field 'requirements', item {j}")
        for j, r in enumerate(entry.get("requirements", []), 1)
    )
    download = entry["download"]
    return DatasetInfo(
        key=entry["key"],
        coop_name=entry["coop_name"],
        display_name=entry.get("display_name", ""),
        folder=entry["folder"],
        image_subdir=entry["image_subdir"],
        num_classes=entry["num_classes"],
        reader=_build_reader(entry["reader"], download, f"{where}: field 'reader'"),
        download=download,
        split_file=entry.get("split_file"),
        requirements=requirements,
        aliases=tuple(aliases),
        val_is_test=entry.get("val_is_test", False),
        test_only=entry.get("test_only", False),
    )


def _parse_requirement(item: Any, where: str) -> Requirement:
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: expected a mapping {{path, kind, what, needed}}, got {item!r}")
    unknown = sorted(set(item) - set(_REQUIREMENT_FIELDS), key=str)
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {unknown}; known: {', '.join(_REQUIREMENT_FIELDS)}")
    for name, required in _REQUIREMENT_FIELDS.items():
        if required and name not in item:
            raise CatalogError(f"{where}: missing field {name!r}")
        if name in item and not isinstance(item[name], str):
            raise CatalogError(f"{where}: field {name!r}: expected a string, got {item[name]!r}")
    if item["kind"] not in _KINDS:
        raise CatalogError(f"{where}: field 'kind': expected one of {', '.join(_KINDS)}, got {item['kind']!r}")
    needed = item.get("needed", "always")
    if needed not in _NEEDED:
        raise CatalogError(f"{where}: field 'needed': expected one of {', '.join(_NEEDED)}, got {needed!r}")
    return Requirement(item["path"], item["kind"], item["what"], needed)


def _build_reader(spec: dict[str, Any], download: str, where: str) -> functools.partial[Any]:
    """The reader named by ``spec['name']`` with the other entries of ``spec`` and ``download`` bound."""
    name = spec.get("name")
    if name not in READERS:
        raise CatalogError(f"{where}: unknown reader {name!r}; known readers: {', '.join(READERS)}")
    func = READERS[name]
    args = {k: v for k, v in spec.items() if k != "name"}
    try:
        inspect.signature(func).bind(Path(), None, download=download, **args)
    except TypeError as e:
        params = [p for p in inspect.signature(func).parameters if p not in ("dataset_dir", "rng", "download")]
        raise CatalogError(
            f"{where}: arguments {sorted(args)} do not fit the reader {name!r} ({e}); "
            f"it takes: {', '.join(params) or 'no arguments'}"
        ) from None
    hints = typing.get_type_hints(func)
    for arg, value in args.items():
        expected = _expected_type(hints.get(arg))
        if expected is not None and not _matches(value, expected):
            raise CatalogError(f"{where}: argument {arg!r} of reader {name!r}: expected {expected}, got {value!r}")
    return functools.partial(func, download=download, **args)


def _expected_type(hint: Any) -> str | None:
    """'string', 'list of strings' or 'mapping of strings to strings' for a reader parameter's hint."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:  # X | None -> X
        origin = typing.get_origin(option) or option
        if origin is str:
            return "string"
        if origin in (list, tuple, Sequence):
            return "list of strings"
        if origin in (dict, Mapping):
            return "mapping of strings to strings"
    return None


def _matches(value: Any, expected: str) -> bool:
    if expected == "string":
        return isinstance(value, str)
    if expected == "list of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
