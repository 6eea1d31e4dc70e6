"""UCF101 (middle frames): ``ucf101/UCF-101-midframes/<Action_Name>/`` + ``split_zhou_UCF101.json``.

Class names split the CamelCase action on capitals and join with "_": ApplyEyeMakeup -> Apply_Eye_Makeup.
"""

from __future__ import annotations

import random
import re
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

IMAGES = "UCF-101-midframes"
DOWNLOAD = (
    "Create <root>/ucf101/, extract UCF-101-midframes.zip (the middle frame of every video; Google Drive "
    "link in CoOp's DATASETS.md) into it, put the official ucfTrainTestlist/ folder there, and add "
    f"split_zhou_UCF101.json as described in CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def split_camel(action: str) -> str:
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup`` (CoOp's regular expression)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


def read_list(dataset_dir: Path, name: str, label_of: dict[str, int]) -> list[Sample]:
    """Lines ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi [label]`` -> the frame of that video."""
    path = require(dataset_dir / "ucfTrainTestlist" / name, f"UCF101 ucfTrainTestlist/{name}", DOWNLOAD)
    items = []
    for n, line in enumerate(read_lines(path), 1):
        action, _, filename = line.split(" ")[0].partition("/")
        if action not in label_of:
            raise SplitFileError(f"{path}, line {n}: action {action!r} is not in classInd.txt")
        renamed = split_camel(action)
        items.append(Sample(f"{renamed}/{filename.replace('.avi', '.jpg')}", label_of[action], renamed))
    return items


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """trainlist01 split 80/20 per class into train/val; testlist01 is the test set."""
    label_of = {}
    for line in read_lines(
        require(dataset_dir / "ucfTrainTestlist" / "classInd.txt", "UCF101 classInd.txt", DOWNLOAD)
    ):
        index, _, action = line.partition(" ")
        label_of[action.strip()] = int(index) - 1
    trainval = read_list(dataset_dir, "trainlist01.txt", label_of)
    test = read_list(dataset_dir, "testlist01.txt", label_of)
    train, val = split_trainval(trainval, rng)
    return train, val, test


INFO = DatasetInfo(
    key="ucf101",
    coop_name="UCF101",
    folder="ucf101",
    image_subdir=IMAGES,
    num_classes=101,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_UCF101.json",
    requirements=(
        Requirement(IMAGES, "dir", "the middle frames, one folder per action"),
        Requirement("ucfTrainTestlist/classInd.txt", "file", "the official class list", "no_split"),
        Requirement("ucfTrainTestlist/trainlist01.txt", "file", "the first training list", "no_split"),
        Requirement("ucfTrainTestlist/testlist01.txt", "file", "the first test list", "no_split"),
    ),
    aliases=("ucf",),
)
