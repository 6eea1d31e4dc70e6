"""ImageNet-A: ``imagenet-adversarial/imagenet-a/<wnid>/`` (200 classes) with ``classnames.txt``; test only."""

from __future__ import annotations

from mmprompt.data.datasets._base import (
    CLASSNAMES_REQUIREMENT,
    DatasetInfo,
    Requirement,
    copy_classnames_hint,
    wnid_test_reader,
)

DOWNLOAD = (
    "Download imagenet-a.tar (https://github.com/hendrycks/natural-adv-examples) and extract it into "
    "<root>/imagenet-adversarial/ (giving imagenet-a/<wnid>/) " + copy_classnames_hint("imagenet-adversarial")
)

INFO = DatasetInfo(
    display_name="ImageNet-A",
    key="imagenet_a",
    coop_name="ImageNetA",
    folder="imagenet-adversarial",
    image_subdir="imagenet-a",
    num_classes=200,
    reader=wnid_test_reader("imagenet-a", DOWNLOAD),
    download=DOWNLOAD,
    requirements=(
        CLASSNAMES_REQUIREMENT,
        Requirement("imagenet-a", "dir", "the images, one folder per wnid"),
    ),
    aliases=("imagenet_adversarial",),
    test_only=True,
)
