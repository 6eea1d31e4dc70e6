"""The benchmark's datasets in their official (CoOp) folder layouts.

``DATASETS`` maps each canonical lower-case key to its :class:`DatasetInfo`; :func:`get_dataset_info`
also accepts CoOp's class names ("OxfordPets", "DescribableTextures") and common spellings, ignoring
case, ``-``, ``_`` and spaces.
"""

from __future__ import annotations

from mmprompt.data.datasets import (
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    mmprompt_demo,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)
from mmprompt.data.datasets._base import DatasetInfo, Requirement

from ...names import name_key

__all__ = ["DATASETS", "DatasetInfo", "Requirement", "get_dataset_info", "list_datasets", "resolve_name"]

DATASETS: dict[str, DatasetInfo] = {
    info.key: info
    for info in (
        imagenet.INFO,
        caltech101.INFO,
        oxford_pets.INFO,
        stanford_cars.INFO,
        oxford_flowers.INFO,
        food101.INFO,
        fgvc_aircraft.INFO,
        sun397.INFO,
        dtd.INFO,
        eurosat.INFO,
        ucf101.INFO,
        imagenetv2.INFO,
        imagenet_sketch.INFO,
        imagenet_a.INFO,
        imagenet_r.INFO,
        mmprompt_demo.INFO,  # the built-in offline demo world, not one of the paper's datasets
    )
}


_LOOKUP: dict[str, str] = {}
for _info in DATASETS.values():
    for _alias in (_info.key, _info.coop_name, _info.folder, *_info.aliases):
        _LOOKUP.setdefault(name_key(_alias), _info.key)
del _info, _alias


def list_datasets() -> list[str]:
    """The canonical dataset keys, in the order of the paper's tables (the demo world last)."""
    return list(DATASETS)


def resolve_name(name: str) -> str:
    """The canonical key of ``name`` ("OxfordPets", "oxford-pets", "oxford_pets" -> "oxford_pets")."""
    key = _LOOKUP.get(name_key(name))
    if key is None:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} (or 'custom')")
    return key


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset, by any accepted name."""
    return DATASETS[resolve_name(name)]
