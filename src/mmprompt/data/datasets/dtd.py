"""DTD (Describable Textures): ``dtd/images/<class>/`` + ``split_zhou_DescribableTextures.json``."""

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
    "Download dtd-r1.0.1.tar.gz (https://www.robots.ox.ac.uk/~vgg/data/dtd/) and extract it into <root> "
    "(giving <root>/dtd/images/<class>/), then add split_zhou_DescribableTextures.json as described in "
    f"CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """50/20/30 per class over the texture folders; class names are the folder names."""
    return read_and_split_folders(dataset_dir / "images", rng)


INFO = DatasetInfo(
    display_name="DTD",
    key="dtd",
    coop_name="DescribableTextures",
    folder="dtd",
    image_subdir="images",
    num_classes=47,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_DescribableTextures.json",
    requirements=(Requirement("images", "dir", "the images, one folder per texture class"),),
    aliases=("describable_textures", "textures"),
)
