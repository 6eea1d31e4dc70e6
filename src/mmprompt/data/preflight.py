"""Pre-flight image check: decode every image a run will read before it starts, in parallel, cached.

A corrupt training image would otherwise stop a run mid-epoch (or never be read when it falls in the
dropped last batch), and a corrupt test image would stop it after training. :func:`check_images`
decodes each image of a split in a thread pool and remembers the result per file (keyed by size and
modification time) in ``<cache>/imagecheck/``, so a second run checks only new or changed files. All
bad files are reported at once; with ``skip_corrupt`` they are left out and listed in the run's results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmprompt.data.errors import CorruptImageError, DataError
from mmprompt.data.images import HIGH_BIT_MODES, probe_image, resolve_path
from mmprompt.data.samples import Sample

__all__ = ["ImageCheck", "check_images", "check_run_images"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


@dataclass
class ImageCheck:
    """What :func:`check_images` found in one split."""

    what: str
    kept: list[Sample]
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each unreadable image."""
    modes: Counter = field(default_factory=Counter)
    """Pillow mode -> number of images."""

    def high_bit(self) -> int:
        return sum(n for m, n in self.modes.items() if m in HIGH_BIT_MODES)

    def summary(self) -> dict[str, Any]:
        return {"images": len(self.kept) + len(self.bad), "skipped": [p for p, _ in self.bad],
                "modes": dict(sorted(self.modes.items()))}


def _cache_file(cache_dir: Path, image_dir: Path | None) -> Path:
    key = hashlib.sha256(str(image_dir or "/").encode()).hexdigest()[:16]
    return cache_dir / "imagecheck" / f"{key}.json"


def _read_cache(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["files"] if data.get("version") == _CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _workers(n: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(16, cores * 2, n))


def _listing(bad: Sequence[tuple[str, str]]) -> str:
    return "".join(f"\n  {p} ({reason})" for p, reason in bad)


def check_images(
    samples: Sequence[Sample],
    image_dir: str | os.PathLike[str] | None,
    *,
    what: str,
    skip_corrupt: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    write_cache: bool = True,
    warn_high_bit: bool = True,
) -> ImageCheck:
    """Decode every image of ``samples``; raise :class:`CorruptImageError` listing every bad one.

    With ``skip_corrupt`` the bad ones are left out (logged and returned in :attr:`ImageCheck.bad`); a
    class that loses all its images is still an error. ``what`` names the split in messages
    (``"eurosat train"``). One warning per call reports high-bit-depth images (scaled to 8 bits).
    """
    from mmprompt.data.fewshot import default_cache_dir

    base = Path(image_dir) if image_dir is not None else None
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_path = _cache_file(cache_root, base)
    cache = _read_cache(cache_path)
    paths = [resolve_path(s, base) for s in samples]
    keys = [str(p) for p in paths]
    stats = [_stat_key(p) for p in paths]
    todo = [i for i, (k, st) in enumerate(zip(keys, stats, strict=True))
            if st is not None and (k not in cache or cache[k][:2] != st)]
    if todo:
        with ThreadPoolExecutor(max_workers=_workers(len(todo))) as pool:
            for i, (mode, reason) in zip(todo, pool.map(lambda i: probe_image(paths[i]), todo), strict=True):
                cache[keys[i]] = [*stats[i], mode, reason]
        if write_cache:
            from mmprompt.fileio import atomic_write_json

            try:
                atomic_write_json(cache_path, {"version": _CACHE_VERSION, "files": cache}, indent=None)
            except OSError as e:  # the cache is an optimisation: never fail a run for it
                log.debug("cannot write the image-check cache %s: %s", cache_path, e)
    result = ImageCheck(what, kept=[])
    for sample, key, st in zip(samples, keys, stats, strict=True):
        mode, reason = (None, "missing") if st is None else tuple(cache[key][2:4])
        if reason:
            result.bad.append((key, reason))
        else:
            result.kept.append(sample)
            result.modes[mode] += 1
    if result.high_bit() and warn_high_bit:
        log.warning("%s: %d of %d images have more than 8 bits per sample (modes %s); they are scaled to 8 bits",
                    what, result.high_bit(), len(samples),
                    ", ".join(sorted(m for m in result.modes if m in HIGH_BIT_MODES)))
    if result.bad and not skip_corrupt:
        raise CorruptImageError(
            f"{what}: {len(result.bad)} of {len(samples)} images are missing or cannot be decoded:"
            f"{_listing(result.bad)}\nFix or re-download them, or pass --skip-corrupt to leave them out "
            "(they are then listed in the run's metrics.json)."
        )
    if result.bad:
        lost = sorted({(s.label, s.classname) for s in samples} - {(s.label, s.classname) for s in result.kept})
        if lost:
            names = ", ".join(f"{name!r} (label {y})" for y, name in lost)
            raise DataError(f"{what}: after leaving out {len(result.bad)} unreadable image(s), no image is left for "
                            f"the class(es) {names}; fix or re-download them:{_listing(result.bad)}")
        log.warning("%s: left out %d unreadable image(s) of %d:%s", what, len(result.bad), len(samples),
                    _listing(result.bad))
    return result


def check_run_images(
    train_splits: Any,
    evals: Mapping[str, Any],
    *,
    check_train: bool,
    skip_corrupt: bool,
    write_cache: bool = True,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Check the training split (``check_train``) and each evaluated test split before a run starts.

    Returns the splits with unreadable images left out (``skip_corrupt``), the evals likewise, and a
    summary for the run's metrics. Without ``skip_corrupt`` every bad file of every split is listed in
    one :class:`CorruptImageError`.
    """
    report: dict[str, Any] = {"skip_corrupt": bool(skip_corrupt), "splits": {}}
    errors: list[str] = []
    checked: dict[tuple[int, str], ImageCheck] = {}

    def run(splits: Any, split: str, label: str) -> list[Sample] | None:
        key = (id(splits), split)
        if key not in checked:
            try:
                checked[key] = check_images(splits.split(split), splits.image_dir, what=f"{splits.name} {label}",
                                            skip_corrupt=skip_corrupt, write_cache=write_cache, warn_high_bit=False)
            except DataError as e:
                errors.append(str(e))
                return None
            report["splits"][f"{splits.name} {label}"] = checked[key].summary()
        return checked[key].kept

    new_train = train_splits
    if check_train:
        kept = run(train_splits, "train", "train")
        if kept is not None and len(kept) != len(train_splits.train):
            new_train = replace(train_splits, train=kept)
    new_evals: dict[str, Any] = {}
    for name, splits in evals.items():
        kept = run(splits, "test", name)
        new_evals[name] = replace(splits, test=kept) if kept is not None and len(kept) != len(splits.test) else splits
    high: dict[str, Counter] = {}
    for (_, _), found in checked.items():
        dataset = found.what.split(" ")[0]
        high.setdefault(dataset, Counter()).update({m: n for m, n in found.modes.items() if m in HIGH_BIT_MODES})
    for dataset, modes in high.items():  # one warning per dataset
        if modes:
            log.warning("%s: %d images have more than 8 bits per sample (modes %s); they are scaled to 8 bits",
                        dataset, sum(modes.values()), ", ".join(sorted(modes)))
    if errors:
        raise CorruptImageError("\n".join(errors))
    return new_train, new_evals, report
