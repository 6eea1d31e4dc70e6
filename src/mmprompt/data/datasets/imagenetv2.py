"""ImageNetV2 (matched frequency): ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``."""

from __future__ import annotations

import random
from pathlib import Path

from mmprompt.data.datasets._base import (
    CLASSNAMES_REQUIREMENT,
    DatasetInfo,
    RawSplits,
    Requirement,
    copy_classnames_hint,
    list_images,
    read_wnid_classnames,
    require,
)
from mmprompt.data.errors import DatasetNotFoundError
from mmprompt.data.samples import Sample

IMAGES = "imagenetv2-matched-frequency-format-val"
DOWNLOAD = (
    "Download imagenetv2-matched-frequency.tar.gz (https://github.com/modestyachts/ImageNetV2), extract it into "
    f"<root>/imagenetv2/ (giving {IMAGES}/0..999) " + copy_classnames_hint("imagenetv2")
)


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """Folder ``str(i)`` holds the images of the i-th class of classnames.txt; test only."""
    names = list(
        read_wnid_classnames(require(dataset_dir / "classnames.txt", "classnames.txt", DOWNLOAD)).values()
    )
    image_dir = require(dataset_dir / IMAGES, "ImageNetV2 image folder", DOWNLOAD)
    items: list[Sample] = []
    for label, name in enumerate(names):
        class_dir = image_dir / str(label)
        if not class_dir.is_dir():
            raise DatasetNotFoundError(
                f"ImageNetV2 class folder {class_dir} is missing (classnames.txt lists {len(names)} classes)"
            )
        items += [Sample(f"{label}/{n}", label, name) for n in list_images(class_dir)]
    return [], [], items


INFO = DatasetInfo(
    key="imagenetv2",
    coop_name="ImageNetV2",
    folder="imagenetv2",
    image_subdir=IMAGES,
    num_classes=1000,
    reader=read,
    download=DOWNLOAD,
    requirements=(CLASSNAMES_REQUIREMENT, Requirement(IMAGES, "dir", "the images, in folders 0..999")),
    aliases=("imagenet_v2",),
    test_only=True,
)
