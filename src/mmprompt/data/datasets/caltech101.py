"""Caltech101: ``caltech-101/101_ObjectCategories/<class>/`` + ``split_zhou_Caltech101.json``."""

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

IMAGES = "101_ObjectCategories"
IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
DOWNLOAD = (
    "Download 101_ObjectCategories.tar.gz (https://data.caltech.edu/records/mzrjq-6wc02, formerly "
    "http://www.vision.caltech.edu/Image_Datasets/Caltech101/) and extract it into <root>/caltech-101/, "
    f"then add split_zhou_Caltech101.json as described in CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """50/20/30 per class over the class folders, without the two ignored folders, with CoOp's renames."""
    return read_and_split_folders(dataset_dir / IMAGES, rng, ignored=IGNORED, new_cnames=NEW_CNAMES)


INFO = DatasetInfo(
    key="caltech101",
    coop_name="Caltech101",
    folder="caltech-101",
    image_subdir=IMAGES,
    num_classes=100,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_Caltech101.json",
    requirements=(Requirement(IMAGES, "dir", "the images, one folder per class"),),
    aliases=("caltech", "caltech_101"),
)
