"""StanfordCars: ``stanford_cars/{cars_train,cars_test}`` + ``split_zhou_StanfordCars.json``.

Class names put the year first, as CoOp does: "Tesla Model S Sedan 2012" -> "2012 Tesla Model S Sedan".
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from mmprompt.data.datasets._base import (
    COOP_DATASETS_MD,
    DatasetInfo,
    RawSplits,
    Requirement,
    load_mat,
    require,
)
from mmprompt.data.samples import Sample, split_trainval

DOWNLOAD = (
    "Create <root>/stanford_cars/ and put there cars_train/ and cars_test/ (from cars_train.tgz and "
    "cars_test.tgz), devkit/ (car_devkit.tgz) and cars_test_annos_withlabels.mat, from "
    "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (mirrors exist, e.g. on Kaggle), then add "
    f"split_zhou_StanfordCars.json as described in CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def year_first(name: str) -> str:
    """Move the last word (the model year) to the front."""
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]])


def _scalar(value: Any) -> Any:
    return np.asarray(value).reshape(-1)[0]


def read_annotations(dataset_dir: Path, image_subdir: str, anno_file: Path, meta_file: Path) -> list[Sample]:
    annotations = load_mat(require(anno_file, "StanfordCars annotations", DOWNLOAD))["annotations"].reshape(
        -1
    )
    names = load_mat(require(meta_file, "StanfordCars devkit/cars_meta.mat", DOWNLOAD))[
        "class_names"
    ].reshape(-1)
    items = []
    for anno in annotations:
        label = int(_scalar(anno["class"])) - 1
        items.append(
            Sample(f"{image_subdir}/{_scalar(anno['fname'])}", label, year_first(str(_scalar(names[label]))))
        )
    return items


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """The train annotations split 80/20 per class into train/val; the labelled test annotations are test."""
    meta = dataset_dir / "devkit" / "cars_meta.mat"
    trainval = read_annotations(
        dataset_dir, "cars_train", dataset_dir / "devkit" / "cars_train_annos.mat", meta
    )
    test = read_annotations(dataset_dir, "cars_test", dataset_dir / "cars_test_annos_withlabels.mat", meta)
    train, val = split_trainval(trainval, rng)
    return train, val, test


INFO = DatasetInfo(
    key="stanford_cars",
    coop_name="StanfordCars",
    folder="stanford_cars",
    image_subdir="",
    num_classes=196,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_StanfordCars.json",
    requirements=(
        Requirement("cars_train", "dir", "the training images"),
        Requirement("cars_test", "dir", "the test images"),
        Requirement("devkit/cars_meta.mat", "file", "the class names (car_devkit.tgz)", "no_split"),
        Requirement(
            "devkit/cars_train_annos.mat", "file", "the training labels (car_devkit.tgz)", "no_split"
        ),
        Requirement("cars_test_annos_withlabels.mat", "file", "the test labels", "no_split"),
    ),
    aliases=("cars", "stanfordcars"),
)
