"""ImageNet: ``imagenet/images/{train,val}/<wnid>/*`` and ``imagenet/classnames.txt`` (val is the test set)."""

from __future__ import annotations

import random
from pathlib import Path

from mmprompt.data.datasets._base import (
    COOP_DATASETS_MD,
    DatasetInfo,
    RawSplits,
    Requirement,
    list_dirs,
    list_images,
    read_wnid_classnames,
    require,
)
from mmprompt.data.errors import DatasetNotFoundError, SplitFileError
from mmprompt.data.samples import Sample

DOWNLOAD = (
    "Download ImageNet (ILSVRC-2012) from https://image-net.org, extract the train and val sets to "
    "<root>/imagenet/images/train and <root>/imagenet/images/val with one folder per wnid in both (val must "
    "be sorted into class folders too, e.g. with the widely used valprep.sh script), and download "
    f"classnames.txt (the CLIP class names) into <root>/imagenet/ as described in CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read_classnames(dataset_dir: Path) -> dict[str, str]:
    return read_wnid_classnames(require(dataset_dir / "classnames.txt", "ImageNet classnames.txt", DOWNLOAD))


def _read_folder(
    image_dir: Path, split: str, label_of: dict[str, int], names: dict[str, str]
) -> list[Sample]:
    split_dir = require(image_dir / split, f"ImageNet {split} folder", DOWNLOAD)
    folders = list_dirs(split_dir)
    if not folders and list_images(split_dir):
        raise DatasetNotFoundError(
            f"{split_dir} holds images directly; sort them into one folder per class (wnid) as in train/ "
            "(for example with the valprep.sh script used by the PyTorch ImageNet example)"
        )
    items: list[Sample] = []
    for folder in folders:
        if folder not in label_of:
            raise SplitFileError(f"{split_dir / folder} is not a class folder of {image_dir / 'train'}")
        if folder not in names:
            raise SplitFileError(f"{image_dir.parent / 'classnames.txt'} has no line for {folder}")
        items += [
            Sample(f"{split}/{folder}/{n}", label_of[folder], names[folder])
            for n in list_images(split_dir / folder)
        ]
    return items


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """Train from images/train, test from images/val; labels follow the sorted wnid folders of train."""
    names = read_classnames(dataset_dir)
    image_dir = dataset_dir / "images"
    label_of = {
        f: i for i, f in enumerate(list_dirs(require(image_dir / "train", "ImageNet train folder", DOWNLOAD)))
    }
    return (
        _read_folder(image_dir, "train", label_of, names),
        [],
        _read_folder(image_dir, "val", label_of, names),
    )


INFO = DatasetInfo(
    key="imagenet",
    coop_name="ImageNet",
    folder="imagenet",
    image_subdir="images",
    num_classes=1000,
    reader=read,
    download=DOWNLOAD,
    requirements=(
        Requirement("classnames.txt", "file", "the CLIP class names (lines 'n01440764 tench')"),
        Requirement("images/train", "dir", "the training images, one folder per wnid"),
        Requirement("images/val", "dir", "the validation images (the test set), one folder per wnid"),
    ),
    val_is_test=True,
)
