"""The benchmark's datasets in their official (CoOp) folder layouts.

``DATASETS`` maps each canonical lower-case key to its :class:`DatasetInfo`, declared in
``catalog.yaml`` (read by :func:`~mmprompt.data.datasets.catalog.load_catalog`; the readers are in
:mod:`~mmprompt.data.datasets.readers`). :func:`get_dataset_info` also accepts CoOp's class names
("OxfordPets", "DescribableTextures") and common spellings, ignoring case, ``-``, ``_`` and spaces.
"""

from __future__ import annotations

from mmprompt.data.datasets._base import DatasetInfo, Requirement
from mmprompt.data.datasets.catalog import load_catalog

from ...names import name_key

__all__ = ["DATASETS", "DatasetInfo", "Requirement", "get_dataset_info", "list_datasets", "resolve_name"]

# in the order of the paper's tables, the built-in offline demo world last
DATASETS: dict[str, DatasetInfo] = load_catalog()


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
