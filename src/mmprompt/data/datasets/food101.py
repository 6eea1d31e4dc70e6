"""Food101: ``food-101/images/<class>/`` + ``split_zhou_Food101.json``."""

from __future__ import annotations

import random
from pathlib import Path

from mmprompt.data.datasets._base import (
    COOP_DATASETS_MD,
    DatasetInfo,
    RawSplits,
    Requirement,
    read_and_split_folders,
)

DOWNLOAD = (
    "Download food-101.tar.gz (https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/) and extract it "
    "into <root> (giving <root>/food-101/images/<class>/), then add split_zhou_Food101.json as described in "
    f"CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """50/20/30 per class over the class folders (as CoOp does; the official meta/ lists are not used)."""
    return read_and_split_folders(dataset_dir / "images", rng)


INFO = DatasetInfo(
    key="food101",
    coop_name="Food101",
    folder="food-101",
    image_subdir="images",
    num_classes=101,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_Food101.json",
    requirements=(Requirement("images", "dir", "the images, one folder per class"),),
    aliases=("food",),
)
