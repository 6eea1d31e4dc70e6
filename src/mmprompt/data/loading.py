"""Images -> tensors: a torch Dataset over samples and a seeded DataLoader (Dassl's loader rules).

The transform (PIL image -> tensor) is the caller's, e.g. from :mod:`mmprompt.clip.transforms`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmprompt.data.errors import DataError
from mmprompt.data.images import load_image, resolve_path, validate_samples
from mmprompt.data.samples import Sample

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Any]


class ImageDataset(Dataset):
    """``(transform(image), label)`` for each sample, decoded with Pillow to RGB.

    Relative sample paths are resolved against ``image_dir`` (``DatasetSplits.image_dir``); a missing
    or undecodable image raises :class:`CorruptImageError` with its path.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Transform | None = None,
        image_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.image_dir = image_dir

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> Path:
        """The absolute (or as given) path of sample ``index``."""
        return resolve_path(self.samples[index], self.image_dir)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample = self.samples[index]
        image = load_image(self.path(index))
        return (self.transform(image) if self.transform is not None else image), sample.label


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random``, NumPy and torch in each worker from the loader's generator."""
    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, drawn from the loader's generator
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(
    samples: Sequence[Sample],
    transform: Transform | None,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int = 0,
    seed: int = 0,
    skip_corrupt: bool = False,
    *,
    image_dir: str | os.PathLike[str] | None = None,
    check_files: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of ``(images, labels)`` batches, reproducible for a given ``seed``.

    Follows Dassl: ``drop_last`` applies only when there are at least ``batch_size`` samples (the
    training loader passes ``shuffle=True, drop_last=True``; evaluation ``False, False``). Before
    loading, every file is checked to exist (``check_files``), or, with ``skip_corrupt``, decoded by
    :func:`validate_samples` and the unreadable ones dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not samples:
        raise DataError("no samples to load")
    if skip_corrupt:
        samples, _ = validate_samples(samples, skip_corrupt=True, image_dir=image_dir)
    elif check_files:
        validate_samples(samples, skip_corrupt=False, image_dir=image_dir, decode=False)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        ImageDataset(samples, transform, image_dir),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last and len(samples) >= batch_size,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
