"""Dataset sanity checks for ``mmprompt data check``: duplicates, train/test overlap, empty classes and splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from mmprompt.data.images import HIGH_BIT_MODES
from mmprompt.data.samples import Sample

__all__ = ["describe_modes", "split_findings"]

_SHOWN = 5


def _few(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f" ... ({len(items)} in all)" if len(items) > _SHOWN else "")


def split_findings(
    splits: dict[str, list[Sample]], classnames: Sequence[str], required: Sequence[str] = ("train", "test")
) -> tuple[list[str], list[str]]:
    """``(warnings, problems)`` of a dataset's splits.

    Problems (the dataset cannot be used): an empty required split. Warnings: an image listed twice in a
    split, an image in both train and test (or val and test), a class with no training image.
    """
    warnings: list[str] = []
    problems = [f"the {name} split is empty" for name in required if not splits.get(name)]
    for name, samples in splits.items():
        dup = sorted(p for p, n in Counter(s.path for s in samples).items() if n > 1)
        if dup:
            warnings.append(f"{len(dup)} image(s) listed more than once in {name}: {_few(dup)}")
    test = {s.path for s in splits.get("test", [])}
    for name in ("train", "val"):
        both = sorted({s.path for s in splits.get(name, [])} & test)
        if both:
            warnings.append(f"{len(both)} image(s) are in both {name} and test (test results would be inflated): "
                            f"{_few(both)}")
    per_class = Counter((s.label, s.classname) for samples in splits.values() for s in samples)
    if len(per_class) > 1:
        typical = sorted(per_class.values())[len(per_class) // 2]
        lone = [f"{name!r} (label {y})" for (y, name), n in sorted(per_class.items()) if n == 1 and typical > 2]
        if lone:
            warnings.append(f"{len(lone)} class(es) have a single image in all splits (a label typo?): {_few(lone)}")
    if splits.get("train"):
        have = {s.label for s in splits["train"]}
        empty = [f"{name!r} (label {y})" for y, name in enumerate(classnames) if y not in have]
        if empty:
            warnings.append(f"{len(empty)} class(es) have no training image: {_few(empty)}")
    return warnings, problems


def describe_modes(modes: Counter) -> str:
    """``"RGB 120, L 3, I;16 2 (more than 8 bits: scaled to 8 bits)"``."""
    parts = [f"{m} {n}" for m, n in sorted(modes.items(), key=lambda kv: -kv[1])]
    high = [m for m in modes if m in HIGH_BIT_MODES]
    note = f" ({', '.join(sorted(high))}: more than 8 bits per sample, scaled to 8 bits)" if high else ""
    transparent = [m for m in modes if m in ("RGBA", "LA", "PA", "P")]
    if transparent:
        note += " (transparency is dropped, not composited, as in the official pipeline)"
    return ", ".join(parts) + note
