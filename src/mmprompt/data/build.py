"""``build_dataset``: a benchmark dataset (or a custom one) from the data root, ready for training."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from mmprompt.data.custom import build_custom_dataset
from mmprompt.data.datasets import DATASETS, DatasetInfo, get_dataset_info
from mmprompt.data.datasets._base import RawSplits, split_file_hint
from mmprompt.data.errors import DatasetNotFoundError
from mmprompt.data.pipeline import GENERATED_SPLIT_SEED, finalize, generated_split_path, save_generated_split
from mmprompt.data.samples import DatasetSplits, read_split_file
from mmprompt.data.templates import get_template

from ..names import name_key

log = logging.getLogger(__name__)


def diagnose_root(info: DatasetInfo, root: str | os.PathLike[str]) -> str:
    """Explain why ``<root>/<folder>`` is missing, and suggest the fix (wrong root, misnamed folder...)."""
    root = Path(os.path.abspath(Path(root).expanduser()))
    expected = root / info.folder
    if not root.is_dir():
        return (
            f"the data root {root} does not exist or is not a folder. --data-root must be the folder that holds the "
            f"dataset folders, e.g. {root}/{info.folder}/. To get {info.coop_name}: {info.download}"
        )
    # signs that root is the dataset folder itself: its name, its split file, a distinctive image folder
    # (not a generic "images"), or at least two of the files and folders of its layout
    markers = {m for m in (info.image_subdir, info.split_file, *(r.path for r in info.requirements)) if m}
    present = {m for m in markers if (root / m).exists()}
    distinctive = {info.split_file, info.image_subdir} - {None, "", "images"}
    if root.name == info.folder or present & distinctive or len(present) >= 2:
        return (
            f"--data-root points at the {info.coop_name} folder itself ({root}). --data-root must be its parent, the data "
            f"root that holds all dataset folders: use --data-root {root.parent}"
        )
    if info.image_subdir and root.name == Path(info.image_subdir).name and root.parent.name == info.folder:
        return (
            f"--data-root points at the image folder of {info.coop_name} ({root}). --data-root must be the data root: "
            f"use --data-root {root.parent.parent}"
        )
    wanted = {name_key(n) for n in (info.folder, info.key, info.coop_name, *info.aliases)}
    children = sorted(p for p in root.iterdir() if p.is_dir())
    for child in children:
        if name_key(child.name) in wanted:
            return (
                f"{expected} does not exist, but {child} does: the folder must be named exactly {info.folder!r}. "
                f"Rename it, or link it: ln -s {child.name} {expected}"
            )
    for child in children:
        if (child / info.folder).is_dir():
            return f"{expected} does not exist, but {child / info.folder} does: use --data-root {child}"
    return f"{expected} does not exist. To get {info.coop_name}: {info.download}"


def dataset_dir_of(info: DatasetInfo, root: str | os.PathLike[str]) -> Path:
    """``<root>/<folder>``, or a :class:`DatasetNotFoundError` that says what to fix."""
    dataset_dir = Path(os.path.abspath(Path(root).expanduser())) / info.folder
    if not dataset_dir.is_dir():
        raise DatasetNotFoundError(diagnose_root(info, root))
    return dataset_dir


def load_split(
    info: DatasetInfo,
    dataset_dir: Path,
    cache_dir: str | os.PathLike[str] | None = None,
    save: bool = True,
    warn: bool = True,
) -> tuple[RawSplits, str]:
    """The train/val/test split before few-shot sampling, and where it came from.

    Reads ``split_zhou_<Name>.json`` when the dataset has one; otherwise generates the split with the
    official rules (seeded with :data:`GENERATED_SPLIT_SEED`) and saves it under the cache folder.
    """
    rng = random.Random(GENERATED_SPLIT_SEED)
    if info.split_file is None:
        return info.reader(dataset_dir, rng), f"official lists in {dataset_dir}"
    path = dataset_dir / info.split_file
    if path.is_file():
        return read_split_file(path), f"split file {path}"
    (log.warning if warn else log.debug)(
        "%s not found; generating a split with the official rules instead. It will differ from the paper's: "
        "to reproduce the paper, %s.",
        path,
        split_file_hint(info),
    )
    splits = info.reader(dataset_dir, rng)
    if not save:
        return splits, "generated split (not saved)"
    saved = generated_split_path(cache_dir, info.key, dataset_dir, info.split_file)
    return splits, save_generated_split(saved, *splits, source=dataset_dir)


def build_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    shots: int = -1,
    seed: int = 1,
    subsample: str = "all",
    cache_dir: str | os.PathLike[str] | None = None,
    classnames_file: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    use_official_cache: bool = True,
) -> DatasetSplits:
    """Read a dataset, then apply the official few-shot sampling and base/novel subsampling.

    Args:
        name: a key of :data:`DATASETS` (or a CoOp name such as "OxfordPets"), or ``"custom"``.
        root: the data root holding the dataset folders (``<root>/caltech-101/...``); for ``"custom"``,
            the dataset itself: a folder per class, or a CSV file (see :func:`build_custom_dataset`).
        shots: images per class kept in train (val keeps ``min(shots, 4)``); ``< 1`` keeps all.
        seed: the run seed of the few-shot sampling (the paper uses 1, 2, 3).
        subsample: ``"all"``, ``"base"`` (first half of the sorted labels) or ``"new"`` (the rest).
        cache_dir: cache root for few-shot selections and generated splits (default
            ``$MMPROMPT_CACHE`` or ``~/.cache/mmprompt``); the dataset folder is never written to.
        classnames_file, split_file: custom datasets only.
        use_official_cache: read ``<dataset>/split_fewshot/shot_K-seed_S.pkl`` when present.
    """
    if name.lower() == "custom":
        return build_custom_dataset(
            root,
            classnames_file=classnames_file,
            split_file=split_file,
            shots=shots,
            seed=seed,
            subsample=subsample,
            cache_dir=cache_dir,
            use_official_cache=use_official_cache,
        )
    if classnames_file is not None or split_file is not None:
        raise ValueError("classnames_file and split_file apply to custom datasets only")
    info = get_dataset_info(name)
    dataset_dir = dataset_dir_of(info, root)
    (train, val, test), source = load_split(info, dataset_dir, cache_dir)
    return finalize(
        info.key,
        train=train,
        val=val,
        test=test,
        image_dir=dataset_dir / info.image_subdir if info.image_subdir else dataset_dir,
        dataset_dir=dataset_dir,
        template=get_template(info.key),
        shots=shots,
        seed=seed,
        subsample=subsample,
        cache_dir=cache_dir,
        val_is_test=info.val_is_test,
        test_only=info.test_only,
        split_source=source,
        use_official_cache=use_official_cache,
    )


__all__ = ["DATASETS", "build_dataset", "dataset_dir_of", "diagnose_root", "load_split"]
