"""The readers of the official dataset layouts, by the name ``catalog.yaml`` gives them.

Every reader is called ``reader(dataset_dir, rng, download=..., **args)``: ``args`` come from the
dataset's ``reader:`` entry in the catalogue and ``download`` is its download text, added to every
"not found" error so it says how to get the dataset. A reader returns ``(train, val, test)`` with image
paths relative to the dataset's image folder; ``rng`` draws the split where the official code draws one
(only when the official ``split_zhou_*.json`` file is absent).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmprompt.data.datasets._base import (
    LineError,
    RawSplits,
    list_dirs,
    list_images,
    load_mat,
    read_and_split_folders,
    read_json,
    read_lines,
    read_wnid_classnames,
    read_wnid_folders,
    require,
    samples_from_lines,
)
from mmprompt.data.errors import DatasetNotFoundError, SplitFileError
from mmprompt.data.samples import Sample, split_per_class, split_trainval

__all__ = ["READERS", "split_camel", "sun397_classname", "year_first"]


# ----------------------------------------------------------------------------------------------------------
# folders of class folders


def read_class_folders(
    dataset_dir: Path,
    rng: random.Random,
    *,
    images: str,
    ignored: Sequence[str] = (),
    new_cnames: Mapping[str, str] | None = None,
    download: str = "",
) -> RawSplits:
    """50/20/30 per class over the sorted class folders of ``images`` (CoOp's ``read_and_split_data``).

    ``ignored`` folders are skipped and ``new_cnames`` renames a folder's class (Caltech101, EuroSAT).
    Used by Caltech101, Food101 (whose official meta/ lists CoOp does not use), DTD, EuroSAT and the demo.
    """
    return read_and_split_folders(
        dataset_dir / images, rng, ignored=ignored, new_cnames=dict(new_cnames or {})
    )


def read_wnid_test_folders(
    dataset_dir: Path, rng: random.Random, *, images: str, download: str = ""
) -> RawSplits:
    """A test-only set of wnid folders, labelled in sorted folder order, named by ``classnames.txt``.

    ImageNet-Sketch, -A and -R; ``classnames.txt`` is ImageNet's, copied into the dataset folder.
    """
    names = read_wnid_classnames(require(dataset_dir / "classnames.txt", "classnames.txt", download))
    image_dir = require(dataset_dir / images, "image folder", download)
    return [], [], read_wnid_folders(image_dir, names, dataset_dir / "classnames.txt")


# ----------------------------------------------------------------------------------------------------------
# ImageNet and ImageNetV2


def _read_imagenet_folder(
    image_dir: Path, split: str, label_of: dict[str, int], names: dict[str, str], download: str
) -> list[Sample]:
    split_dir = require(image_dir / split, f"ImageNet {split} folder", download)
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


def read_imagenet(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """Train from images/train, test from images/val; labels follow the sorted wnid folders of train.

    Class names come from CoOp's ``classnames.txt`` (lines ``n01440764 tench``).
    """
    names = read_wnid_classnames(require(dataset_dir / "classnames.txt", "ImageNet classnames.txt", download))
    image_dir = dataset_dir / "images"
    label_of = {
        f: i for i, f in enumerate(list_dirs(require(image_dir / "train", "ImageNet train folder", download)))
    }
    return (
        _read_imagenet_folder(image_dir, "train", label_of, names, download),
        [],
        _read_imagenet_folder(image_dir, "val", label_of, names, download),
    )


def read_imagenetv2(dataset_dir: Path, rng: random.Random, *, images: str, download: str = "") -> RawSplits:
    """Folder ``str(i)`` of ``images`` holds the images of the i-th class of classnames.txt; test only."""
    names = list(
        read_wnid_classnames(require(dataset_dir / "classnames.txt", "classnames.txt", download)).values()
    )
    image_dir = require(dataset_dir / images, "ImageNetV2 image folder", download)
    items: list[Sample] = []
    for label, name in enumerate(names):
        class_dir = image_dir / str(label)
        if not class_dir.is_dir():
            raise DatasetNotFoundError(
                f"ImageNetV2 class folder {class_dir} is missing (classnames.txt lists {len(names)} classes)"
            )
        items += [Sample(f"{label}/{n}", label, name) for n in list_images(class_dir)]
    return [], [], items


# ----------------------------------------------------------------------------------------------------------
# datasets read from official list files


def read_oxford_pets(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """annotations/trainval.txt split 80/20 per class into train/val; annotations/test.txt is test.

    Lines ``Abyssinian_100 1 1 1``: the breed is the lower-cased file name without its number, the label
    the 1-based class id; lines starting with ``#`` are comments.
    """

    def parse(line: str) -> Sample | None:
        if line.startswith("#"):
            return None
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise LineError(f"expected 'IMAGE CLASS_ID SPECIES BREED_ID', got {line!r}")
        imname = fields[0]
        breed = "_".join(imname.split("_")[:-1]).lower()
        return Sample(f"{imname}.jpg", int(fields[1]) - 1, breed)

    anno = dataset_dir / "annotations"
    trainval = samples_from_lines(
        require(anno / "trainval.txt", "OxfordPets annotations/trainval.txt", download), parse
    )
    test = samples_from_lines(require(anno / "test.txt", "OxfordPets annotations/test.txt", download), parse)
    train, val = split_trainval(trainval, rng)
    return train, val, test


def sun397_classname(folder: str) -> str:
    """``a/apartment_building/outdoor`` -> ``outdoor apartment_building`` (the pieces after the letter)."""
    return " ".join(folder.split("/")[1:][::-1])


def read_sun397(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """Training_01.txt split 80/20 per class into train/val; Testing_01.txt is the test set.

    Labels follow ClassName.txt (lines ``/a/abbey``); list lines are ``/a/abbey/sun_xxx.jpg``.
    """
    folders = [
        line[1:]
        for line in read_lines(require(dataset_dir / "ClassName.txt", "SUN397 ClassName.txt", download))
    ]
    label_of = {c: i for i, c in enumerate(folders)}

    def parse(line: str) -> Sample:
        imname = line[1:]  # drop the leading "/"
        folder = imname.rsplit("/", 1)[0]
        if folder not in label_of:
            raise LineError(f"class folder {folder!r} is not in ClassName.txt")
        return Sample(imname, label_of[folder], sun397_classname(folder))

    trainval, test = (
        samples_from_lines(require(dataset_dir / name, f"SUN397 {name}", download), parse)
        for name in ("Training_01.txt", "Testing_01.txt")
    )
    train, val = split_trainval(trainval, rng)
    return train, val, test


def split_camel(action: str) -> str:
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup`` (CoOp's regular expression)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


def read_ucf101(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """ucfTrainTestlist/trainlist01.txt split 80/20 per class into train/val; testlist01.txt is test.

    Labels come from classInd.txt (lines ``1 ApplyEyeMakeup``); list lines
    ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi [label]`` name the middle frame of that video, in the
    folder of the CamelCase action split on capitals: ``Apply_Eye_Makeup/v_..._c01.jpg``.
    """
    lists = dataset_dir / "ucfTrainTestlist"
    label_of = {}
    for line in read_lines(require(lists / "classInd.txt", "UCF101 classInd.txt", download)):
        index, _, action = line.partition(" ")
        label_of[action.strip()] = int(index) - 1

    def parse(line: str) -> Sample:
        action, _, filename = line.split(" ")[0].partition("/")
        if action not in label_of:
            raise LineError(f"action {action!r} is not in classInd.txt")
        renamed = split_camel(action)
        return Sample(f"{renamed}/{filename.replace('.avi', '.jpg')}", label_of[action], renamed)

    trainval, test = (
        samples_from_lines(require(lists / name, f"UCF101 ucfTrainTestlist/{name}", download), parse)
        for name in ("trainlist01.txt", "testlist01.txt")
    )
    train, val = split_trainval(trainval, rng)
    return train, val, test


def read_fgvc_aircraft(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """The official images_variant_{train,val,test}.txt lists are the split; labels follow variants.txt.

    List lines are ``1025794 707-320``: the image id, then the variant name (which may contain spaces).
    """
    variants = read_lines(require(dataset_dir / "variants.txt", "FGVCAircraft variants.txt", download))
    label_of = {v: i for i, v in enumerate(variants)}

    def parse(line: str) -> Sample:
        image_id, _, variant = line.partition(" ")
        if variant not in label_of:
            raise LineError(f"variant {variant!r} is not in variants.txt")
        return Sample(f"{image_id}.jpg", label_of[variant], variant)

    train, val, test = (
        samples_from_lines(require(dataset_dir / name, f"FGVCAircraft {name}", download), parse)
        for name in (f"images_variant_{s}.txt" for s in ("train", "val", "test"))
    )
    return train, val, test


# ----------------------------------------------------------------------------------------------------------
# datasets read from MATLAB annotations


def year_first(name: str) -> str:
    """Move the last word (the model year) to the front: "Tesla Model S Sedan 2012" -> "2012 Tesla ..."."""
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]])


def _scalar(value: Any) -> Any:
    return np.asarray(value).reshape(-1)[0]


def _read_cars_annotations(
    image_subdir: str, anno_file: Path, meta_file: Path, download: str
) -> list[Sample]:
    annotations = load_mat(require(anno_file, "StanfordCars annotations", download))["annotations"].reshape(
        -1
    )
    names = load_mat(require(meta_file, "StanfordCars devkit/cars_meta.mat", download))[
        "class_names"
    ].reshape(-1)
    items = []
    for anno in annotations:
        label = int(_scalar(anno["class"])) - 1
        items.append(
            Sample(f"{image_subdir}/{_scalar(anno['fname'])}", label, year_first(str(_scalar(names[label]))))
        )
    return items


def read_stanford_cars(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """devkit/cars_train_annos.mat split 80/20 per class into train/val; the labelled test annotations
    (cars_test_annos_withlabels.mat) are test. Class names from devkit/cars_meta.mat, year first as CoOp.
    """
    meta = dataset_dir / "devkit" / "cars_meta.mat"
    trainval = _read_cars_annotations(
        "cars_train", dataset_dir / "devkit" / "cars_train_annos.mat", meta, download
    )
    test = _read_cars_annotations("cars_test", dataset_dir / "cars_test_annos_withlabels.mat", meta, download)
    train, val = split_trainval(trainval, rng)
    return train, val, test


def read_oxford_flowers(dataset_dir: Path, rng: random.Random, *, download: str = "") -> RawSplits:
    """imagelabels.mat gives the 1-based label of image_00001.jpg, ...; 50/20/30 per class.

    Class names from cat_to_name.json (``{"1": "pink primrose", ...}``); labels in order of first
    appearance in imagelabels.mat, as the official code groups them.
    """
    labels = np.asarray(
        load_mat(require(dataset_dir / "imagelabels.mat", "imagelabels.mat", download))["labels"]
    ).reshape(-1)
    path = require(dataset_dir / "cat_to_name.json", "Flowers102 cat_to_name.json", download)
    data = read_json(path)
    if not isinstance(data, dict):
        raise SplitFileError(f'{path}: expected an object like {{"1": "pink primrose", ...}}')
    names = {int(k): str(v) for k, v in data.items()}
    tracker: dict[int, list[str]] = defaultdict(list)
    for i, label in enumerate(labels):
        tracker[int(label)].append(f"image_{i + 1:05d}.jpg")
    missing = sorted(set(tracker) - set(names))
    if missing:
        raise SplitFileError(f"{dataset_dir / 'cat_to_name.json'} has no name for the label(s) {missing}")
    groups = [(label - 1, names[label], paths) for label, paths in tracker.items()]
    return split_per_class(groups, rng)


READERS: dict[str, Callable[..., RawSplits]] = {
    "class_folders": read_class_folders,
    "wnid_test_folders": read_wnid_test_folders,
    "imagenet": read_imagenet,
    "imagenetv2": read_imagenetv2,
    "oxford_pets": read_oxford_pets,
    "sun397": read_sun397,
    "ucf101": read_ucf101,
    "fgvc_aircraft": read_fgvc_aircraft,
    "stanford_cars": read_stanford_cars,
    "oxford_flowers": read_oxford_flowers,
}
"""Reader name (``reader: {name: ...}`` in catalog.yaml) -> reader function."""
