"""Class descriptions: sentences per class (e.g. CuPL's GPT-3 descriptions) for the methods that read them.

A descriptions file is JSON, ``{class name: [sentence, ...]}``, given with ``--descriptions FILE`` (or
``data.descriptions``). It reaches a learner through its :class:`~mmprompt.methods.contract.DatasetContext`
(``descriptions``); a method that reads them sets ``uses_descriptions`` and matches them to its classes with
:func:`match_descriptions`. Nothing is ever downloaded or generated: a class without sentences is an error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .checks import ConfigError

T = TypeVar("T", bound=Any)

__all__ = ["description_key", "descriptions_for_dataset", "keep_descriptions", "load_descriptions",
           "match_descriptions"]


def description_key(name: str) -> str:
    """How class names and description keys are matched: lower-cased, ``_`` read as a space."""
    return str(name).replace("_", " ").lower()


def load_descriptions(path: str | Path) -> dict[str, list[str]]:
    """Read a descriptions file (JSON object: class name -> list of sentences), checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"descriptions file {path}: not valid JSON ({exc})") from exc
    return check_descriptions(data, str(path))


def descriptions_for_dataset(path: str | Path | None, dataset: str | None) -> tuple[dict[str, list[str]] | None, str]:
    """(descriptions, source) of ``dataset`` from ``path``: a JSON file (used for every dataset), or a folder
    holding ``<dataset>.json`` per dataset (a dataset without its file gets None). (None, "") without a path."""
    if not path:
        return None, ""
    path = Path(path)
    if path.is_dir():
        file = path / f"{dataset}.json"
        if not file.is_file():
            return None, str(file)
        path = file
    return load_descriptions(path), str(path)


def keep_descriptions(context: T, previous: T | None) -> T:
    """``context`` (a :class:`~mmprompt.methods.contract.DatasetContext`), with the descriptions of ``previous``
    when it gives none and asks for no file: descriptions a learner already holds (e.g. saved with its prompts)
    stay until others are given."""
    if previous is None or previous.descriptions is None or context.descriptions is not None \
            or context.descriptions_source:  # a file was asked for (a folder's <dataset>.json that is missing)
        return context
    return dataclasses.replace(context, descriptions=previous.descriptions,
                               descriptions_source=previous.descriptions_source)


def check_descriptions(data: object, source: str = "descriptions") -> dict[str, list[str]]:
    """``data`` as ``{class name: [sentence, ...]}``, or a ConfigError naming ``source`` and the bad entry."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object {{class name: [sentence, ...]}}, "
                          f"got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for name, sentences in data.items():
        if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not all(
                isinstance(s, str) and s.strip() for s in sentences):
            raise ConfigError(f"{source}: class {name!r} must map to a list of non-empty sentences (strings), "
                              f"got {sentences!r}"[:300])
        out[str(name)] = list(sentences)
    return out


def match_descriptions(classnames: Sequence[str], descriptions: Mapping[str, Sequence[str]] | None,
                       source: str = "the class descriptions") -> list[list[str]]:
    """The sentences of each class, matched by :func:`description_key`. A ConfigError names every class
    that has no entry or an empty list, and keys that collide once normalised."""
    if descriptions is None:
        where = f" ({source} does not exist)" if source.endswith(".json") else ""
        raise ConfigError(f"no class descriptions given{where}: pass --descriptions FILE "
                          "(JSON: class name -> list of sentences)")
    table: dict[str, list[str]] = {}
    for key, sentences in descriptions.items():
        norm = description_key(key)
        if norm in table:
            raise ConfigError(f"{source}: two keys name the class {norm!r} (keys are matched case-insensitively, "
                              "with '_' read as a space)")
        table[norm] = list(sentences)
    missing = [c for c in classnames if description_key(c) not in table]
    empty = [c for c in classnames if description_key(c) in table and not table[description_key(c)]]
    if missing or empty:
        parts = [f"no entry for {len(missing)} class(es): {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"an empty list for {', '.join(map(repr, empty))}"] if empty else []
        raise ConfigError(f"{source}: every class needs at least one sentence; " + "; ".join(parts)
                          + f" (of {len(classnames)} classes); pass --descriptions FILE with sentences for them")
    return [table[description_key(c)] for c in classnames]
