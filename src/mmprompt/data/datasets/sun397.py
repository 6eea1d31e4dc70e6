"""SUN397: ``sun397/SUN397/<letter>/<class...>/`` + ``split_zhou_SUN397.json``.

Class names come from the path: "/a/abbey" -> "abbey", "/a/apartment_building/outdoor" ->
"outdoor apartment_building" (the pieces after the letter folder, reversed).
"""

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
    "Create <root>/sun397/, extract SUN397.tar.gz (https://vision.princeton.edu/projects/2010/SUN/) into it "
    "(giving sun397/SUN397/a/abbey/...), put ClassName.txt, Training_01.txt and Testing_01.txt from "
    "Partitions.zip there, and add split_zhou_SUN397.json as described in CoOp's DATASETS.md "
    f"({COOP_DATASETS_MD})."
)


def classname_of(folder: str) -> str:
    """``a/apartment_building/outdoor`` -> ``outdoor apartment_building``."""
    return " ".join(folder.split("/")[1:][::-1])


def read_list(dataset_dir: Path, name: str, label_of: dict[str, int]) -> list[Sample]:
    path = require(dataset_dir / name, f"SUN397 {name}", DOWNLOAD)
    items = []
    for n, line in enumerate(read_lines(path), 1):
        imname = line[1:]  # drop the leading "/"
        folder = imname.rsplit("/", 1)[0]
        if folder not in label_of:
            raise SplitFileError(f"{path}, line {n}: class folder {folder!r} is not in ClassName.txt")
        items.append(Sample(imname, label_of[folder], classname_of(folder)))
    return items


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """Training_01 split 80/20 per class into train/val; Testing_01 is the test set."""
    folders = [
        line[1:]
        for line in read_lines(require(dataset_dir / "ClassName.txt", "SUN397 ClassName.txt", DOWNLOAD))
    ]
    label_of = {c: i for i, c in enumerate(folders)}
    trainval = read_list(dataset_dir, "Training_01.txt", label_of)
    test = read_list(dataset_dir, "Testing_01.txt", label_of)
    train, val = split_trainval(trainval, rng)
    return train, val, test


INFO = DatasetInfo(
    key="sun397",
    coop_name="SUN397",
    folder="sun397",
    image_subdir="SUN397",
    num_classes=397,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_SUN397.json",
    requirements=(
        Requirement("SUN397", "dir", "the images (SUN397/a/abbey/...)"),
        Requirement("ClassName.txt", "file", "the class list from Partitions.zip", "no_split"),
        Requirement("Training_01.txt", "file", "the first training partition", "no_split"),
        Requirement("Testing_01.txt", "file", "the first test partition", "no_split"),
    ),
    aliases=("sun",),
)
