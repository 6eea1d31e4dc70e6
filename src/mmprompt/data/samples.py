"""Samples, split files, few-shot sampling and base/novel subsampling, following CoOp/Dassl exactly.

The functions here mirror the official code (``dassl.data.datasets.base_dataset.DatasetBase`` and
CoOp's ``OxfordPets``/``DTD`` helpers) but take an explicit ``random.Random`` instead of the global
``random`` module: ``random.Random(seed).sample(...)`` draws the same numbers as ``random.seed(seed)``
followed by ``random.sample(...)``, so the selections are identical, without global state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from mmprompt.data.errors import SplitFileError
from mmprompt.fileio import atomic_write_json

log = logging.getLogger(__name__)

Subsample = Literal["all", "base", "new"]
SUBSAMPLE_CHOICES: tuple[str, ...] = ("all", "base", "new")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image: ``path`` (POSIX, relative to the dataset's image folder), its label and class name."""

    path: str
    label: int
    classname: str

    def resolve(self, image_dir: str | os.PathLike[str]) -> Path:
        """Absolute path of the image, given the image folder the path is relative to."""
        return Path(image_dir) / self.path


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset after few-shot sampling and base/novel subsampling.

    ``classnames[label]`` is the class name of ``label``; labels are contiguous ``0..n-1``.
    ``dataset_dir`` is the dataset's folder under the data root (``image_dir`` is inside it);
    ``provenance`` says where the split and the few-shot selection came from.
    """

    name: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    image_dir: Path
    template: str
    dataset_dir: Path | None = None
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, which: str) -> list[Sample]:
        """The samples of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in SPLIT_NAMES:
            raise ValueError(f"unknown split {which!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, which)

    def abspath(self, sample: Sample) -> Path:
        """Absolute path of one sample's image."""
        return sample.resolve(self.image_dir)

    def resolved(self, which: str) -> list[Sample]:
        """The samples of one split with absolute paths (for code that does not know ``image_dir``)."""
        return [Sample(str(self.abspath(s)), s.label, s.classname) for s in self.split(which)]


class _Labelled(Protocol):
    @property
    def label(self) -> int: ...


T = TypeVar("T", bound=_Labelled)


# ----------------------------------------------------------------------------------------------------------
# Split files: CoOp's split_zhou_<Name>.json = {"train"|"val"|"test": [[relative_path, label, classname]]}


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(path: object, source: str | os.PathLike[str], where: str) -> str:
    """Return ``path`` as a normalised POSIX relative path, or raise if it escapes the dataset folder.

    Absolute paths, Windows drive paths and any ``..`` component are rejected, naming ``source`` (the
    file) and ``where`` (the entry) in the message.
    """
    if not isinstance(path, str) or not path.strip():
        raise SplitFileError(f"{source}: entry {where} has path {path!r}; expected a non-empty relative path")
    posix = path.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if posix.startswith("/") or _DRIVE.match(posix) or ".." in parts or not parts:
        raise SplitFileError(
            f"{source}: entry {where} has path {path!r}, which points outside the dataset folder. "
            "Split files must list paths relative to the dataset's image folder (no absolute paths, "
            "no '..'); fix or re-download the file."
        )
    return "/".join(parts)


def parse_split(data: Any, source: str | os.PathLike[str]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Validate the content of a split file (already JSON-decoded) and turn it into samples."""
    if not isinstance(data, dict):
        raise SplitFileError(f"{source}: expected a JSON object with keys train, val, test")
    out: list[list[Sample]] = []
    for key in SPLIT_NAMES:
        if key not in data:
            raise SplitFileError(f"{source}: the key {key!r} is missing (expected train, val and test)")
        entries = data[key]
        if not isinstance(entries, list):
            raise SplitFileError(f"{source}: {key!r} must be a list of [path, label, classname]")
        items = []
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise SplitFileError(
                    f"{source}: entry {where} is {entry!r}; expected [path, label, classname]"
                )
            path, label, classname = entry
            if (
                isinstance(label, bool)
                or not isinstance(label, (int, str))
                or not str(label).lstrip("-").isdigit()
            ):
                raise SplitFileError(f"{source}: entry {where} has label {label!r}; expected an integer")
            if int(label) < 0:
                raise SplitFileError(f"{source}: entry {where} has a negative label {label!r}")
            if not isinstance(classname, str):
                raise SplitFileError(
                    f"{source}: entry {where} has class name {classname!r}; expected a string"
                )
            items.append(Sample(check_relative_path(path, source, where), int(label), classname))
        out.append(items)
    return out[0], out[1], out[2]


def read_split_file(path: str | os.PathLike[str]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Read a CoOp split file; paths in it are relative to the dataset's image folder."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SplitFileError(f"{path}: not valid JSON ({e}); re-download or delete the file") from e
    except UnicodeDecodeError as e:
        raise SplitFileError(f"{path}: not UTF-8 text (byte offset {e.start}); re-download or re-save it") from None
    return parse_split(data, path)


def split_to_json(samples: Iterable[Sample]) -> list[list[Any]]:
    """Samples as the ``[[path, label, classname], ...]`` lists of a split file."""
    return [[s.path, s.label, s.classname] for s in samples]


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON (indented like Dassl's ``write_json``) through a temporary file and a rename."""
    atomic_write_json(path, data, indent=4, separators=(",", ": "))


def write_split_file(
    path: str | os.PathLike[str],
    train: Sequence[Sample],
    val: Sequence[Sample],
    test: Sequence[Sample],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a split file in CoOp's format (extra keys, ignored by the official reader, are allowed)."""
    data: dict[str, Any] = {
        "train": split_to_json(train),
        "val": split_to_json(val),
        "test": split_to_json(test),
    }
    data.update(extra or {})
    write_json_atomic(path, data)


def fingerprint(*splits: Iterable[Sample]) -> str:
    """A short hash of sample lists (paths, labels, names and order), to detect stale caches."""
    h = hashlib.sha256()
    for samples in splits:
        for s in samples:
            h.update(f"{s.path}\t{s.label}\t{s.classname}\n".encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Split generation when no split file exists (CoOp's read_and_split_data and split_trainval)


def split_per_class(
    groups: Sequence[tuple[int, str, list[str]]],
    rng: random.Random,
    p_trn: float = 0.5,
    p_val: float = 0.2,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split each class's images into train/val/test (CoOp's ``DTD.read_and_split_data``).

    ``groups`` holds ``(label, classname, paths)`` in the order to process; each class's paths are
    shuffled with ``rng``, then the first ``round(n * p_trn)`` go to train, the next ``round(n * p_val)``
    to val and the rest to test.
    """
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for label, classname, paths in groups:
        images = list(paths)
        rng.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if n_train <= 0 or n_val <= 0 or n_test <= 0:
            raise SplitFileError(
                f"class {classname!r} has {n_total} image(s), too few to split {p_trn:.0%}/{p_val:.0%}/"
                f"{1 - p_trn - p_val:.0%} into train/val/test (at least one each is needed); add images "
                "or give a split file"
            )
        train += [Sample(p, label, classname) for p in images[:n_train]]
        val += [Sample(p, label, classname) for p in images[n_train : n_train + n_val]]
        test += [Sample(p, label, classname) for p in images[n_train + n_val :]]
    return train, val, test


def split_trainval(
    trainval: Sequence[Sample], rng: random.Random, p_val: float = 0.2
) -> tuple[list[Sample], list[Sample]]:
    """Split a trainval list into train and val per class (CoOp's ``OxfordPets.split_trainval``)."""
    tracker: dict[int, list[int]] = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            name = trainval[idxs[0]].classname
            raise SplitFileError(
                f"class {name!r} (label {label}) has {len(idxs)} trainval image(s), too few to hold out "
                f"{p_val:.0%} for validation; add images or give a split file"
            )
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


# ----------------------------------------------------------------------------------------------------------
# Few-shot sampling and base/novel subsampling (Dassl's generate_fewshot_dataset / subsample_classes)


def split_by_label(items: Iterable[T]) -> dict[int, list[T]]:
    """Group items by label; the groups come in the order each label first appears (Dassl)."""
    out: dict[int, list[T]] = defaultdict(list)
    for item in items:
        out[item.label].append(item)
    return out


def fewshot_subset(items: Sequence[T], num_shots: int, rng: random.Random) -> list[T]:
    """Keep ``num_shots`` items per label: ``rng.sample`` per label, all items when a label has fewer.

    ``num_shots < 1`` keeps everything (and draws nothing from ``rng``).
    """
    if num_shots < 1:
        return list(items)
    out: list[T] = []
    for group in split_by_label(items).values():
        out.extend(rng.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


def sample_fewshot(
    train: Sequence[T], val: Sequence[T] | None, num_shots: int, seed: int
) -> tuple[list[T], list[T] | None]:
    """The official few-shot selection: seed once, sample train with k shots, then val with min(k, 4).

    ``val=None`` (ImageNet, whose val is its test set) samples train only. ``num_shots < 1`` keeps all.
    """
    if num_shots < 1:
        return list(train), None if val is None else list(val)
    rng = random.Random(seed)
    train_out = fewshot_subset(train, num_shots, rng)
    val_out = None if val is None else fewshot_subset(val, min(num_shots, 4), rng)
    return train_out, val_out


def subsample_labels(labels: Iterable[int], subsample: str) -> list[int]:
    """The labels kept by ``subsample``: sorted labels, base = first ceil(n/2), new = the rest."""
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}, not {subsample!r}")
    ordered = sorted(set(labels))
    m = math.ceil(len(ordered) / 2)
    return {"all": ordered, "base": ordered[:m], "new": ordered[m:]}[subsample]


def subsample_classes(*splits: Sequence[Sample], subsample: str = "all") -> list[list[Sample]]:
    """Keep the base or new half of the classes of ``splits[0]`` in every split, relabelled from 0.

    As in Dassl, the labels are gathered from the first split (train); ``"all"`` returns the splits
    unchanged.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}, not {subsample!r}")
    if subsample == "all":
        return [list(s) for s in splits]
    selected = subsample_labels((s.label for s in splits[0]), subsample)
    relabel = {y: i for i, y in enumerate(selected)}
    return [
        [Sample(s.path, relabel[s.label], s.classname) for s in split if s.label in relabel]
        for split in splits
    ]


def classnames_from(*splits: Iterable[Sample], source: str = "the dataset") -> list[str]:
    """``classnames[label]`` from the samples; labels must be contiguous and each must have one name."""
    names: dict[int, str] = {}
    for samples in splits:
        for s in samples:
            known = names.setdefault(s.label, s.classname)
            if known != s.classname:
                raise SplitFileError(
                    f"{source}: label {s.label} is called both {known!r} and {s.classname!r} ({s.path})"
                )
    if not names:
        return []
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise SplitFileError(f"{source}: labels are not contiguous; no sample has label {shown}")
    return [names[i] for i in range(len(names))]
