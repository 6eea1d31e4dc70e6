"""The built-in demo world: ``mmprompt_demo/images/<class>/`` + ``split_zhou_MMPromptDemo.json``.

Generated offline by :func:`mmprompt.demo.generate_demo_dataset` (``mmprompt demo`` does it); read
here exactly like the benchmark datasets, so the demo exercises the same readers and protocol code.
"""

from __future__ import annotations

import random
from pathlib import Path

from mmprompt.data.datasets._base import DatasetInfo, RawSplits, Requirement, read_and_split_folders

DOWNLOAD = (
    "Nothing to download: generate it with `mmprompt demo` or, in Python, "
    "`mmprompt.demo.generate_demo_dataset(<root>)` (it writes <root>/mmprompt_demo/)."
)


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """50/20/30 per class over the class folders (only when the generated split file is missing)."""
    return read_and_split_folders(dataset_dir / "images", rng)


INFO = DatasetInfo(
    display_name="Demo",
    key="mmprompt_demo",
    coop_name="MMPromptDemo",
    folder="mmprompt_demo",
    image_subdir="images",
    num_classes=25,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_MMPromptDemo.json",
    requirements=(Requirement("images", "dir", "the generated images, one folder per class"),),
    aliases=("demo",),
)
