"""FGVCAircraft (variants): ``fgvc_aircraft/{images,variants.txt,images_variant_{train,val,test}.txt}``."""

from __future__ import annotations

import random
from pathlib import Path

from mmprompt.data.datasets._base import (
    COOP_DATASETS_MD,
    DatasetInfo,
    RawSplits,
    Requirement,
    read_lines,
    require,
)
from mmprompt.data.errors import SplitFileError
from mmprompt.data.samples import Sample

DOWNLOAD = (
    "Download fgvc-aircraft-2013b.tar.gz (https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/), extract it, "
    "keep only its data/ folder and move it to <root>/fgvc_aircraft/ "
    f"(CoOp's DATASETS.md, {COOP_DATASETS_MD}). No split file is needed: the official lists are used."
)


def read_split(dataset_dir: Path, name: str, label_of: dict[str, int]) -> list[Sample]:
    """Lines ``1025794 707-320``: image id, then the variant name (which may contain spaces)."""
    path = require(dataset_dir / name, f"FGVCAircraft {name}", DOWNLOAD)
    items = []
    for n, line in enumerate(read_lines(path), 1):
        image_id, _, variant = line.partition(" ")
        if variant not in label_of:
            raise SplitFileError(f"{path}, line {n}: variant {variant!r} is not in variants.txt")
        items.append(Sample(f"{image_id}.jpg", label_of[variant], variant))
    return items


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """Labels follow the order of variants.txt; the official train/val/test lists are the split."""
    variants = read_lines(require(dataset_dir / "variants.txt", "FGVCAircraft variants.txt", DOWNLOAD))
    label_of = {v: i for i, v in enumerate(variants)}
    return tuple(
        read_split(dataset_dir, f"images_variant_{s}.txt", label_of) for s in ("train", "val", "test")
    )  # type: ignore[return-value]


INFO = DatasetInfo(
    key="fgvc_aircraft",
    coop_name="FGVCAircraft",
    folder="fgvc_aircraft",
    image_subdir="images",
    num_classes=100,
    reader=read,
    download=DOWNLOAD,
    requirements=(
        Requirement("images", "dir", "the images"),
        Requirement("variants.txt", "file", "the 100 variant names"),
        Requirement("images_variant_train.txt", "file", "the official train list"),
        Requirement("images_variant_val.txt", "file", "the official val list"),
        Requirement("images_variant_test.txt", "file", "the official test list"),
    ),
    aliases=("aircraft", "fgvcaircraft"),
)
