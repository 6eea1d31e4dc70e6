"""Custom datasets: a folder per class, ``train/``/``[val/]``/``test/`` folders of class folders, or a CSV.

* ``DIR/<class>/*.jpg``: a 50/20/30 split per class is generated (CoOp's rule) and saved in the cache.
* ``DIR/train/<class>/``, ``DIR/test/<class>/`` and optionally ``DIR/val/<class>/``: used as given; without
  ``val/``, 20% of each class of train is held out (CoOp's ``split_trainval``).
* ``FILE.csv`` with rows ``path,label[,split]``: paths relative to the CSV's folder; ``label`` is a class
  name or an integer (integers need a class-names file); ``split`` is train, val or test. A header row
  (``path,label,split``; ``class`` also accepted) is optional. Without a split column a 50/20/30 split is
  generated; without val rows, 20% of train is held out.

A class-names file (optional) sets the label order and the display names: a JSON list or
{"key": "name"} object, or a text file with one class per line, either ``key display name`` (like
ImageNet's classnames.txt) or the key alone (for integer labels: the whole line is the name).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

from mmprompt.data.datasets._base import list_dirs, list_images
from mmprompt.data.errors import DatasetNotFoundError, SplitFileError
from mmprompt.data.pipeline import GENERATED_SPLIT_SEED, finalize, generated_split_path, save_generated_split
from mmprompt.data.samples import (
    DatasetSplits,
    Sample,
    check_relative_path,
    read_split_file,
    split_per_class,
    split_trainval,
)
from mmprompt.data.templates import DEFAULT_TEMPLATE

from ..checks import excerpt

log = logging.getLogger(__name__)

_PATH_COLUMNS = ("path", "image", "file", "filename", "filepath", "image_path", "impath")
_LABEL_COLUMNS = ("label", "class", "classname", "class_name", "category", "target")
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read_classnames_file(path: Path, keys: Sequence[str] | None, strict: bool = True) -> dict[str, str]:
    """Class key -> display name, in label order. ``keys=None`` means integer labels (names by line).

    Lines starting with ``#`` are comments. With ``strict=False`` a line naming no known key is kept as
    the key itself (to report which data labels the file lacks).
    """
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(read_text(path, "class-names file"))
        except json.JSONDecodeError as e:
            raise SplitFileError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, list):
            pairs = (
                [(str(i), str(n)) for i, n in enumerate(data)]
                if keys is None
                else [(str(n), str(n)) for n in data]
            )
        elif isinstance(data, dict):
            pairs = [(str(k), str(v)) for k, v in data.items()]
        else:
            raise SplitFileError(f"{path}: expected a JSON list of names or an object {{key: name}}")
        return dict(pairs)
    lines = [ln.strip() for ln in read_text(path, "class-names file").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if keys is None:
        return {str(i): line for i, line in enumerate(lines)}
    known = set(keys)
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        first, _, rest = line.partition(" ")
        if line in known:
            out[line] = line
        elif first in known and rest.strip():
            out[first] = rest.strip()
        elif not strict:
            out[line] = line
        else:
            raise SplitFileError(
                f"{path}, line {n}: {line!r} names no class of the dataset (known: {sorted(known)[:5]}...)"
            )
    return out


def prompt_name(key: str) -> str:
    """A class folder or label as a class name in a prompt: ``blue_circle`` -> ``blue circle`` (CoOp's own
    class names have spaces; a class-names file states names exactly)."""
    return " ".join(key.replace("_", " ").split()) or key


def _label_map(keys: Sequence[str], classnames_file: Path | None) -> tuple[dict[str, int], dict[str, str]]:
    """key -> label and key -> name, from the class-names file's order or the sorted keys."""
    if classnames_file is None:  # the folder or label is the name; its underscores are spaces in a prompt
        ordered = sorted(set(keys))
        return {k: i for i, k in enumerate(ordered)}, {k: prompt_name(k) for k in ordered}
    names = read_classnames_file(classnames_file, sorted(set(keys)))
    missing = sorted(set(keys) - set(names))
    if missing:
        raise SplitFileError(f"{classnames_file}: no line for the class(es) {missing[:10]}")
    ordered = [k for k in names if k in set(keys)]
    return {k: i for i, k in enumerate(ordered)}, {k: names[k] for k in ordered}


def _read_folders(
    source: Path, classnames_file: Path | None, rng: random.Random
) -> tuple[list[list[Sample]], str]:
    split_dirs = {s: source / s for s in ("train", "val", "test") if (source / s).is_dir()}
    if {"train", "test"} <= set(split_dirs) and list_dirs(split_dirs["train"]):
        found = {s: {c: list_images(d / c) for c in list_dirs(d)} for s, d in split_dirs.items()}
        label_of, name_of = _label_map([c for per in found.values() for c in per], classnames_file)
        out = {
            s: [
                Sample(f"{s}/{c}/{n}", label_of[c], name_of[c])
                for c in sorted(per, key=label_of.get)
                for n in per[c]
            ]
            for s, per in found.items()
        }
        if "val" in out:
            return [out["train"], out["val"], out["test"]], f"train/val/test folders in {source}"
        train, val = split_trainval(out["train"], rng)
        return [train, val, out["test"]], f"train/test folders in {source}, 20% of train held out for val"
    classes = list_dirs(source)
    if not classes:
        raise DatasetNotFoundError(f"{source} has no class folders; expected {source}/<class>/<image files>")
    label_of, name_of = _label_map(classes, classnames_file)
    groups = [
        (label_of[c], name_of[c], [f"{c}/{n}" for n in list_images(source / c)])
        for c in sorted(classes, key=label_of.get)
    ]
    return list(split_per_class(groups, rng)), "generated"


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped), or a :class:`SplitFileError` naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SplitFileError(
            f"{path}: the {what} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None


def _looks_like_header(row: list[str]) -> bool:
    cells = [c.strip().lower() for c in row]
    if any(c in _PATH_COLUMNS or c in _LABEL_COLUMNS or c == "split" for c in cells):
        return True
    return not cells[0].endswith(_IMAGE_SUFFIXES)


def _columns(header: list[str], source: Path) -> tuple[int, int, int | None]:
    cells = [c.strip().lower() for c in header]
    path_col = next((i for i, c in enumerate(cells) if c in _PATH_COLUMNS), None)
    label_col = next((i for i, c in enumerate(cells) if c in _LABEL_COLUMNS), None)
    if path_col is None or label_col is None:
        missing = "path" if path_col is None else "label"
        names = _PATH_COLUMNS if path_col is None else _LABEL_COLUMNS
        raise SplitFileError(
            f"{source}, line 1: the header {','.join(header)!r} has no {missing} column; expected one of "
            f"{', '.join(names)} (and an optional 'split' column), e.g. 'path,label,split'. Without a header, "
            "rows are path,label[,split]"
        )
    return path_col, label_col, cells.index("split") if "split" in cells else None


def _norm_label(label: str) -> str:
    return " ".join(label.split()).casefold()


def _check_label_variants(entries: list[tuple[str, str, str | None, int]], source: Path) -> None:
    """Two spellings of one class (case, spaces) are a typo, not two classes."""
    first: dict[str, tuple[str, int]] = {}
    for _, key, _, line in entries:
        seen = first.setdefault(_norm_label(key), (key, line))
        if seen[0] != key:
            raise SplitFileError(
                f"{source}, line {line}: label {key!r} differs from {seen[0]!r} (line {seen[1]}) only in case or "
                "spaces; use one spelling per class"
            )


def _read_csv(
    source: Path, classnames_file: Path | None, rng: random.Random
) -> tuple[list[list[Sample]], str]:
    rows = [r for r in csv.reader(read_text(source, "CSV file").splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise SplitFileError(f"{source}: the CSV file is empty")
    if _looks_like_header(rows[0]):
        cols = _columns(rows[0], source)
        rows, first_line = rows[1:], 2
    else:
        cols, first_line = (0, 1, 2 if len(rows[0]) > 2 else None), 1
    entries = []
    for n, row in enumerate(rows, first_line):
        if len(row) <= max(c for c in cols if c is not None):
            raise SplitFileError(f"{source}, line {n}: expected path,label[,split], got {row!r}")
        path = check_relative_path(row[cols[0]].strip(), source, f"on line {n}")
        split = None
        if cols[2] is not None:
            split = _SPLITS.get(row[cols[2]].strip().lower())
            if split is None:
                raise SplitFileError(f"{source}, line {n}: split {row[cols[2]]!r} is not train, val or test")
        entries.append((path, row[cols[1]].strip(), split, n))
    if not entries:
        raise SplitFileError(f"{source}: the CSV file has a header but no rows")
    if all(re.fullmatch(r"\d+", e[1]) for e in entries):
        entries = [(p, str(int(k)), s, n) for p, k, s, n in entries]
        if classnames_file is None:
            raise SplitFileError(
                f"{source}: the labels are integers; give a class-names file (--classnames) to name them"
            )
        names = read_classnames_file(classnames_file, None)
        bad = next((e for e in entries if e[1] not in names), None)
        if bad:
            raise SplitFileError(f"{source}, line {bad[3]}: label {bad[1]} has no name in {classnames_file} "
                                 f"({len(names)} names: labels 0 to {len(names) - 1})")
        label_of, name_of = {k: int(k) for k in names}, names
    else:
        _check_label_variants(entries, source)
        if classnames_file is not None:
            known = read_classnames_file(classnames_file, sorted({e[1] for e in entries}), strict=False)
            bad = next((e for e in entries if e[1] not in known), None)
            if bad:
                near = [k for k in known if _norm_label(k) == _norm_label(bad[1])]
                hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(list(known)[:8])}"
                raise SplitFileError(f"{source}, line {bad[3]}: label {bad[1]!r} is not in {classnames_file}{hint}")
        label_of, name_of = _label_map([e[1] for e in entries], classnames_file)
    samples = {s: [] for s in (None, "train", "val", "test")}
    for path, key, split, _ in entries:
        samples[split].append(Sample(path, label_of[key], name_of[key]))
    if samples[None] and cols[2] is not None:
        raise SplitFileError(f"{source}: some rows have no split")
    if cols[2] is None:
        groups: dict[int, list[str]] = {}
        for s in samples[None]:
            groups.setdefault(s.label, []).append(s.path)
        inverse = {label_of[k]: name_of[k] for k in label_of}
        ordered = [(y, inverse[y], sorted(groups[y])) for y in sorted(groups)]
        return list(split_per_class(ordered, rng)), "generated"
    for name in ("train", "test"):
        if not samples[name]:
            raise SplitFileError(f"{source}: the split column gives no {name} rows; the {name} split would be empty")
    if samples["val"]:
        return [samples["train"], samples["val"], samples["test"]], f"split column of {source}"
    train, val = split_trainval(samples["train"], rng)
    return [train, val, samples["test"]], f"split column of {source}, 20% of train held out for val"


def _check_distinct_names(splits: Sequence[Sequence[Sample]], where: str | os.PathLike[str]) -> None:
    """Two labels with one class name would train as two classes that no prompt can tell apart."""
    names: dict[int, str] = {}
    for split in splits:
        for s in split:
            names.setdefault(s.label, s.classname)
    by_name: dict[str, list[int]] = {}
    for label, name in sorted(names.items()):
        by_name.setdefault(name, []).append(label)
    dup = [(n, labels) for n, labels in by_name.items() if len(labels) > 1]
    if dup:
        shown = "; ".join(f"{excerpt(n)} names labels {', '.join(map(str, labels))}" for n, labels in dup[:5])
        raise SplitFileError(f"{where}: class names must be distinct, but {shown}; rename one of each")


def custom_key(source: str | os.PathLike[str]) -> str:
    """The cache key of a custom dataset: ``custom_<folder or file stem>``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem) or "data"
    return f"custom_{stem}"


def build_custom_dataset(
    source: str | os.PathLike[str],
    *,
    classnames_file: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    shots: int = -1,
    seed: int = 1,
    subsample: str = "all",
    cache_dir: str | os.PathLike[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    use_official_cache: bool = True,
) -> DatasetSplits:
    """Read a custom dataset (see the module docstring) and apply few-shot and base/novel subsampling.

    ``split_file`` is a CoOp-format split with paths relative to the dataset folder (or the CSV's
    folder). Generated splits are saved under ``<cache>/splits/``, never in the dataset folder.
    """
    source = Path(os.path.abspath(Path(source).expanduser()))
    if not source.exists():
        raise DatasetNotFoundError(
            f"custom dataset {source} does not exist (give a folder of class folders or a CSV file)"
        )
    image_dir = source if source.is_dir() else source.parent
    names_path = Path(classnames_file).expanduser() if classnames_file is not None else None
    if names_path is not None and not names_path.is_file():
        raise DatasetNotFoundError(f"class-names file {names_path} does not exist")
    rng = random.Random(GENERATED_SPLIT_SEED)
    key = custom_key(source)
    if split_file is not None:
        if names_path is not None:
            raise ValueError(
                "a split file already names the classes; give either split_file or classnames_file"
            )
        splits, origin = list(read_split_file(split_file)), f"split file {split_file}"
    elif source.is_dir():
        splits, origin = _read_folders(source, names_path, rng)
    else:
        splits, origin = _read_csv(source, names_path, rng)
    if origin == "generated":
        saved = generated_split_path(cache_dir, key, source, "split.json")
        origin = save_generated_split(saved, *splits, source=source)
    train, val, test = splits
    _check_distinct_names(splits, names_path or split_file or source)
    return finalize(key, train=train, val=val, test=test, image_dir=image_dir, dataset_dir=image_dir,
                    template=template, split_source=origin, shots=shots, seed=seed, subsample=subsample,
                    cache_dir=cache_dir, use_official_cache=use_official_cache)
