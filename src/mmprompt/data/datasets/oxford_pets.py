"""OxfordPets: ``oxford_pets/{images,annotations}`` + ``split_zhou_OxfordPets.json``."""

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
from mmprompt.data.samples import Sample, split_trainval

DOWNLOAD = (
    "Create <root>/oxford_pets/, extract images.tar.gz and annotations.tar.gz from "
    "https://www.robots.ox.ac.uk/~vgg/data/pets/ into it, then add split_zhou_OxfordPets.json as described "
    f"in CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read_annotations(path: Path) -> list[Sample]:
    """Lines ``Abyssinian_100 1 1 1``: the breed is the lower-cased file name without its number."""
    items = []
    for n, line in enumerate(read_lines(path), 1):
        if line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise SplitFileError(
                f"{path}, line {n}: expected 'IMAGE CLASS_ID SPECIES BREED_ID', got {line!r}"
            )
        imname = fields[0]
        breed = "_".join(imname.split("_")[:-1]).lower()
        items.append(Sample(f"{imname}.jpg", int(fields[1]) - 1, breed))
    return items


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """trainval.txt split 80/20 per class into train/val; test.txt is the test set."""
    anno = dataset_dir / "annotations"
    trainval = read_annotations(
        require(anno / "trainval.txt", "OxfordPets annotations/trainval.txt", DOWNLOAD)
    )
    test = read_annotations(require(anno / "test.txt", "OxfordPets annotations/test.txt", DOWNLOAD))
    train, val = split_trainval(trainval, rng)
    return train, val, test


INFO = DatasetInfo(
    key="oxford_pets",
    coop_name="OxfordPets",
    folder="oxford_pets",
    image_subdir="images",
    num_classes=37,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_OxfordPets.json",
    requirements=(
        Requirement("images", "dir", "the images (Abyssinian_1.jpg, ...)"),
        Requirement("annotations/trainval.txt", "file", "the official trainval list", "no_split"),
        Requirement("annotations/test.txt", "file", "the official test list", "no_split"),
    ),
    aliases=("pets", "oxfordpets"),
)
