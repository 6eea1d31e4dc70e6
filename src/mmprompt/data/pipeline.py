"""The steps shared by every dataset after reading its split: few-shot sampling, then base/novel subsampling."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from mmprompt.data.fewshot import default_cache_dir, select_fewshot
from mmprompt.data.samples import (
    SUBSAMPLE_CHOICES,
    DatasetSplits,
    Sample,
    classnames_from,
    subsample_classes,
    write_split_file,
)

log = logging.getLogger(__name__)

# Seed of the generator used when a split must be generated (no split file): fixed, so that every run
# and every machine generate the same split from the same files, whatever the run's seed.
GENERATED_SPLIT_SEED = 1


def generated_split_path(
    cache_dir: str | os.PathLike[str] | None, key: str, source: Path, filename: str
) -> Path:
    """``<cache>/splits/<key>-<hash of the dataset folder>/<filename>`` for a generated split."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(str(Path(source).absolute()).encode()).hexdigest()[:8]
    return root / "splits" / f"{key}-{digest}" / filename


def save_generated_split(
    path: Path, train: Sequence[Sample], val: Sequence[Sample], test: Sequence[Sample], source: Path
) -> str:
    """Write a generated split (in CoOp's format) to the cache; returns a provenance line."""
    try:
        write_split_file(
            path, train, val, test, extra={"generated_by": "mmprompt", "dataset_dir": str(source)}
        )
        log.info("saved the generated split to %s", path)
        return f"generated split (seed {GENERATED_SPLIT_SEED}), saved to {path}"
    except OSError as e:
        log.warning("could not save the generated split to %s (%s)", path, e)
        return f"generated split (seed {GENERATED_SPLIT_SEED}), not saved"


def finalize(
    key: str,
    *,
    train: Sequence[Sample],
    val: Sequence[Sample],
    test: Sequence[Sample],
    image_dir: Path,
    dataset_dir: Path,
    template: str,
    shots: int = -1,
    seed: int = 1,
    subsample: str = "all",
    cache_dir: str | os.PathLike[str] | None = None,
    val_is_test: bool = False,
    test_only: bool = False,
    split_source: str = "",
    use_official_cache: bool = True,
) -> DatasetSplits:
    """Few-shot sampling of train (then val with min(k, 4)), then base/novel subsampling, as in CoOp.

    ``val_is_test`` (ImageNet): only train is sampled and val is the test set. ``test_only`` datasets
    (ImageNetV2, -Sketch, -A, -R) are used whole: ``shots`` is ignored and ``subsample`` must be "all".
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}, not {subsample!r}")
    provenance = {"split": split_source}
    if test_only:
        if subsample != "all":
            raise ValueError(f"{key} is a test-only dataset: base/new subsampling does not apply (use 'all')")
        if shots >= 1:
            log.info("%s is test-only; ignoring shots=%d", key, shots)
        provenance["fewshot"] = "none (test-only dataset)"
        train, val = [], []
    else:
        train, sampled_val, provenance["fewshot"] = select_fewshot(
            key, dataset_dir, train, None if val_is_test else val, shots, seed, cache_dir, use_official_cache
        )
        val = test if val_is_test else (sampled_val or [])
    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    provenance["subsample"] = subsample
    classnames = classnames_from(train, val, test, source=split_source or key)
    log.info(
        "%s: %d classes, %d train / %d val / %d test images (shots=%d, seed=%d, subsample=%s)",
        key, len(classnames), len(train), len(val), len(test), shots, seed, subsample,
    )  # fmt: skip
    return DatasetSplits(
        name=key,
        classnames=classnames,
        train=list(train),
        val=list(val),
        test=list(test),
        image_dir=image_dir,
        template=template,
        dataset_dir=dataset_dir,
        provenance=provenance,
    )
