"""Read ``catalog.yaml``, the declaration of the benchmark's datasets, into :class:`DatasetInfo` objects.

Every entry is validated: a missing or unknown field, a value of the wrong type, an unknown reader or
reader argument raises :class:`CatalogError` naming the file, the dataset and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mmprompt.data.datasets._base import DatasetInfo, DownloadFile, Requirement
from mmprompt.data.datasets.readers import READERS

__all__ = ["CATALOG_FILE", "CatalogError", "load_catalog", "parse_catalog"]

CATALOG_FILE = "catalog.yaml"


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
    from ...checks import ConfigError
    from ...yamlio import load_yaml_text

    try:  # safely: alias expansion bounded, duplicate keys an error
        data = load_yaml_text(text, source)
    except ConfigError as e:
        raise CatalogError(str(e)) from None
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: expected a top-level 'datasets:' list of dataset entries")
    out: dict[str, DatasetInfo] = {}
    for i, entry in enumerate(entries, 1):
        key = entry.get("key") if isinstance(entry, dict) else None
        info = _parse_entry(
            entry, f"{source}, dataset {key!r}" if isinstance(key, str) else f"{source}, dataset #{i}"
        )
        if info.key in out:
            raise CatalogError(f"{source}, dataset {info.key!r}: field 'key': {info.key!r} is declared twice")
        out[info.key] = info
    return out


def _parse_entry(entry: Any, where: str) -> DatasetInfo:
    fields = _check_fields(DatasetInfo, entry, where)
    if fields["num_classes"] <= 0:
        raise CatalogError(
            f"{where}: field 'num_classes': expected a positive integer, got {fields['num_classes']}"
        )
    fields["requirements"] = tuple(
        Requirement(**_check_fields(Requirement, r, f"{where}: field 'requirements', item {j}"))
        for j, r in enumerate(fields.get("requirements", ()), 1)
    )
    fields["files"] = tuple(
        _parse_file(f, f"{where}: field 'files', item {j}") for j, f in enumerate(fields.get("files", ()), 1)
    )
    fields["aliases"] = tuple(fields.get("aliases", ()))
    fields["reader"] = _build_reader(fields["reader"], fields["download"], f"{where}: field 'reader'")
    return DatasetInfo(**fields)


_HEX = {"md5": 32, "sha256": 64}


def _parse_file(item: Any, where: str) -> DownloadFile:
    """One entry of a dataset's ``files`` list: its URLs, checksum and where it goes, checked."""
    fields = _check_fields(DownloadFile, item, where)
    for algo, length in _HEX.items():
        value = fields.get(algo)
        if value is not None and (len(value) != length or any(c not in "0123456789abcdef" for c in value)):
            raise CatalogError(f"{where}: field {algo!r}: expected {length} lower-case hex digits, got {value!r}")
    if fields.get("md5") and fields.get("sha256"):
        raise CatalogError(f"{where}: give one checksum (md5 or sha256), not both")
    if fields["size"] <= 0:
        raise CatalogError(f"{where}: field 'size': expected a positive number of bytes, got {fields['size']}")
    for url in fields["urls"]:
        if not url.startswith(("https://", "http://")):
            raise CatalogError(f"{where}: field 'urls': expected http(s) URLs, got {url!r}")
    for name in ("name", "into", "strip"):
        value = fields.get(name) or ""
        if value.startswith("/") or ".." in value.split("/") or (name == "name" and "/" in value):
            raise CatalogError(f"{where}: field {name!r}: expected a relative path inside the dataset folder, "
                               f"got {value!r}")
    fields["urls"] = tuple(fields["urls"])
    return DownloadFile(**fields)


def _check_fields(cls: type, item: Any, where: str) -> dict[str, Any]:
    """``item``'s fields, checked against the dataclass ``cls``: its fields without default are required."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: expected a mapping with the fields {', '.join(fields)}, got {item!r}")
    unknown = sorted(set(item) - set(fields), key=str)
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {unknown}; known fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    for name, field in fields.items():
        if name not in item:
            if field.default is dataclasses.MISSING:
                raise CatalogError(f"{where}: missing field {name!r} ({_expected(hints[name])[1]})")
            continue
        fits, words = _expected(hints[name])
        if not fits(item[name]):
            raise CatalogError(f"{where}: field {name!r}: expected {words}, got {item[name]!r}")
    return dict(item)


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
        params = [
            p for p in inspect.signature(func).parameters if p not in ("dataset_dir", "rng", "download")
        ]
        raise CatalogError(
            f"{where}: arguments {sorted(args)} do not fit the reader {name!r} ({e}); "
            f"it takes: {', '.join(params) or 'no arguments'}"
        ) from None
    hints = typing.get_type_hints(func)
    for arg, value in args.items():
        fits, words = _expected(hints[arg])
        if not fits(value):
            raise CatalogError(
                f"{where}: argument {arg!r} of reader {name!r}: expected {words}, got {value!r}"
            )
    return functools.partial(func, download=download, **args)


def _expected(hint: Any) -> tuple[Callable[[Any], bool], str]:
    """A test of a YAML value against a field's type hint, and the hint in words for the error message."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: null stands for the default
        fits, words = _expected(next(a for a in args if a is not type(None)))
        return (lambda v: v is None or fits(v)), words
    if origin is typing.Literal:
        return (lambda v: v in args), f"one of {', '.join(map(str, args))}"
    if origin is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if origin is int:
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"
    if origin is str:
        return (lambda v: isinstance(v, str)), "a string"
    if origin in (list, tuple, Sequence):
        if args and args[0] is str:
            return (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)), "a list of strings"
        return (lambda v: isinstance(v, list)), "a list"
    if origin in (dict, Mapping):
        return (
            lambda v: (
                isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())
            )
        ), "a mapping of strings to strings"
    if origin is Callable:
        return (lambda v: isinstance(v, dict)), "a mapping {name: <reader>, <argument>: <value>...}"
    raise TypeError(f"no YAML form for the type {hint!r}")  # pragma: no cover - a new field's type
