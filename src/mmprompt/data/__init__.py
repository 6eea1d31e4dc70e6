"""Datasets for prompt learning: the benchmark's readers, the official few-shot and base/novel rules, loaders.

Typical use::

    from mmprompt.data import build_dataset, make_loader

    splits = build_dataset("caltech101", "/data", shots=16, seed=1, subsample="base")
    loader = make_loader(splits.train, transform, batch_size=4, shuffle=True, drop_last=True,
                         seed=1, image_dir=splits.image_dir)   # batches: images, labels, indices, size

The loader names (:func:`make_loader`, :class:`ImageDataset`, :func:`seed_worker`) import torch and are
loaded on first use; they are the same loader that training and evaluation use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmprompt.data.build import build_dataset, dataset_dir_of, diagnose_root, load_split
from mmprompt.data.check import CheckReport, check_dataset
from mmprompt.data.custom import build_custom_dataset
from mmprompt.data.datasets import DATASETS, DatasetInfo, get_dataset_info, list_datasets, resolve_name
from mmprompt.data.errors import CorruptImageError, DataError, DatasetNotFoundError, SplitFileError
from mmprompt.data.fewshot import default_cache_dir, fewshot_cache_path, official_fewshot_path, select_fewshot
from mmprompt.data.images import load_image, validate_samples
from mmprompt.data.official_pickle import OfficialDatum, RestrictedUnpickler, load_official_fewshot
from mmprompt.data.samples import (
    DatasetSplits,
    Sample,
    read_split_file,
    sample_fewshot,
    subsample_classes,
    write_split_file,
)
from mmprompt.data.templates import TEMPLATES, get_template

_LAZY = {"make_loader": "loading", "ImageDataset": "loading", "seed_worker": "loading"}

__all__ = [
    "DATASETS",
    "TEMPLATES",
    "CheckReport",
    "CorruptImageError",
    "DataError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "ImageDataset",
    "OfficialDatum",
    "RestrictedUnpickler",
    "Sample",
    "SplitFileError",
    "build_custom_dataset",
    "build_dataset",
    "check_dataset",
    "dataset_dir_of",
    "default_cache_dir",
    "diagnose_root",
    "fewshot_cache_path",
    "get_dataset_info",
    "get_template",
    "list_datasets",
    "load_image",
    "load_official_fewshot",
    "load_split",
    "make_loader",
    "official_fewshot_path",
    "read_split_file",
    "resolve_name",
    "sample_fewshot",
    "seed_worker",
    "select_fewshot",
    "subsample_classes",
    "validate_samples",
    "write_split_file",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mmprompt.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mmprompt.data' has no attribute {name!r}")
