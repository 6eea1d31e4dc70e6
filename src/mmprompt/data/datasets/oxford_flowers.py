"""Flowers102: ``oxford_flowers/{jpg,imagelabels.mat,cat_to_name.json}`` + ``split_zhou_OxfordFlowers.json``."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmprompt.data.datasets._base import (
    COOP_DATASETS_MD,
    DatasetInfo,
    RawSplits,
    Requirement,
    load_mat,
    read_json,
    require,
)
from mmprompt.data.errors import SplitFileError
from mmprompt.data.samples import split_per_class

DOWNLOAD = (
    "Create <root>/oxford_flowers/, extract 102flowers.tgz (giving jpg/) and put imagelabels.mat there, both "
    "from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/; then add cat_to_name.json and "
    f"split_zhou_OxfordFlowers.json as described in CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read_classnames(dataset_dir: Path) -> dict[int, str]:
    """cat_to_name.json: {"1": "pink primrose", ...} (1-based)."""
    path = require(dataset_dir / "cat_to_name.json", "Flowers102 cat_to_name.json", DOWNLOAD)
    data = read_json(path)
    if not isinstance(data, dict):
        raise SplitFileError(f'{path}: expected an object like {{"1": "pink primrose", ...}}')
    return {int(k): str(v) for k, v in data.items()}


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """imagelabels.mat gives the 1-based label of image_00001.jpg, ...; 50/20/30 per class."""
    labels = np.asarray(
        load_mat(require(dataset_dir / "imagelabels.mat", "imagelabels.mat", DOWNLOAD))["labels"]
    ).reshape(-1)
    names = read_classnames(dataset_dir)
    tracker: dict[int, list[str]] = defaultdict(list)
    for i, label in enumerate(labels):
        tracker[int(label)].append(f"image_{i + 1:05d}.jpg")
    missing = sorted(set(tracker) - set(names))
    if missing:
        raise SplitFileError(f"{dataset_dir / 'cat_to_name.json'} has no name for the label(s) {missing}")
    # official order: labels in order of first appearance in imagelabels.mat
    groups = [(label - 1, names[label], paths) for label, paths in tracker.items()]
    return split_per_class(groups, rng)


INFO = DatasetInfo(
    display_name="Flowers102",
    key="oxford_flowers",
    coop_name="OxfordFlowers",
    folder="oxford_flowers",
    image_subdir="jpg",
    num_classes=102,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_OxfordFlowers.json",
    requirements=(
        Requirement("jpg", "dir", "the images (image_00001.jpg, ...)"),
        Requirement("cat_to_name.json", "file", "the class names", "no_split"),
        Requirement("imagelabels.mat", "file", "the labels", "no_split"),
    ),
    aliases=("flowers102", "flowers", "oxfordflowers"),
)
