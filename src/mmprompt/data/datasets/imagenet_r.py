"""ImageNet-R: ``imagenet-rendition/imagenet-r/<wnid>/`` (200 classes) with ``classnames.txt``; test only."""

from __future__ import annotations

from mmprompt.data.datasets._base import (
    CLASSNAMES_REQUIREMENT,
    DatasetInfo,
    Requirement,
    copy_classnames_hint,
    wnid_test_reader,
)

DOWNLOAD = (
    "Download imagenet-r.tar (https://github.com/hendrycks/imagenet-r) and extract it into "
    "<root>/imagenet-rendition/ (giving imagenet-r/<wnid>/) " + copy_classnames_hint("imagenet-rendition")
)

INFO = DatasetInfo(
    display_name="ImageNet-R",
    key="imagenet_r",
    coop_name="ImageNetR",
    folder="imagenet-rendition",
    image_subdir="imagenet-r",
    num_classes=200,
    reader=wnid_test_reader("imagenet-r", DOWNLOAD),
    download=DOWNLOAD,
    requirements=(
        CLASSNAMES_REQUIREMENT,
        Requirement("imagenet-r", "dir", "the images, one folder per wnid"),
    ),
    aliases=("imagenet_rendition",),
    test_only=True,
)
