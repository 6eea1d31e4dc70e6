"""ImageNet-Sketch: ``imagenet-sketch/images/<wnid>/`` with ``classnames.txt``; test only."""

from __future__ import annotations

from mmprompt.data.datasets._base import (
    CLASSNAMES_REQUIREMENT,
    DatasetInfo,
    Requirement,
    copy_classnames_hint,
    wnid_test_reader,
)

DOWNLOAD = (
    "Download ImageNet-Sketch (https://github.com/HaohanWang/ImageNet-Sketch) and extract it to "
    "<root>/imagenet-sketch/ (giving images/<wnid>/) " + copy_classnames_hint("imagenet-sketch")
)

INFO = DatasetInfo(
    display_name="ImageNet-Sketch",
    key="imagenet_sketch",
    coop_name="ImageNetSketch",
    folder="imagenet-sketch",
    image_subdir="images",
    num_classes=1000,
    reader=wnid_test_reader("images", DOWNLOAD),
    download=DOWNLOAD,
    requirements=(CLASSNAMES_REQUIREMENT, Requirement("images", "dir", "the sketches, one folder per wnid")),
    test_only=True,
)
