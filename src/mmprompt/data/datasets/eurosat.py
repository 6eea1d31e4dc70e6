"""EuroSAT (RGB): ``eurosat/2750/<class>/`` + ``split_zhou_EuroSAT.json``, with CoOp's longer class names."""

from __future__ import annotations

import random
from pathlib import Path

from mmprompt.data.datasets._base import (
    COOP_DATASETS_MD,
    DatasetInfo,
    RawSplits,
    Requirement,
    read_and_split_folders,
)

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
DOWNLOAD = (
    "Download EuroSAT.zip (the RGB version, https://github.com/phelber/EuroSAT) and extract it into "
    "<root>/eurosat/ (giving eurosat/2750/<class>/), then add split_zhou_EuroSAT.json as described in "
    f"CoOp's DATASETS.md ({COOP_DATASETS_MD})."
)


def read(dataset_dir: Path, rng: random.Random) -> RawSplits:
    """50/20/30 per class over the class folders, renamed as in CoOp (``SeaLake`` -> ``Sea or Lake``)."""
    return read_and_split_folders(dataset_dir / "2750", rng, new_cnames=NEW_CNAMES)


INFO = DatasetInfo(
    key="eurosat",
    coop_name="EuroSAT",
    folder="eurosat",
    image_subdir="2750",
    num_classes=10,
    reader=read,
    download=DOWNLOAD,
    split_file="split_zhou_EuroSAT.json",
    requirements=(Requirement("2750", "dir", "the RGB images, one folder per class"),),
)
