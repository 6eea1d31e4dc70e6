"""The one image-loading path: a Dataset over samples and loaders whose order depends only on (seed, epoch).

Used by training and evaluation (:mod:`mmprompt.engine`) and by :func:`make_loader` for your own loops.
Each epoch's shuffle and each image's augmentation seed are drawn from a ``torch.Generator`` seeded with
(seed, epoch). The order therefore does not depend on how many epochs ran in this process (resuming is
exact), on the number of data-loader workers, or on the number of data-parallel processes: every process
computes the same global order and takes its own slice of each global batch.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mmprompt.data.errors import CorruptImageError, DataError
from mmprompt.data.images import load_image, validate_samples

__all__ = [
    "Batch", "EpochBatchSampler", "ImageDataset", "collate", "default_workers", "epoch_order", "eval_loader",
    "make_loader", "seed_worker", "train_loader",
]

logger = logging.getLogger(__name__)
_MASK63 = (1 << 63) - 1


def default_workers(requested: int | None = None) -> int:
    """``requested``, or (None) what the machine has: no workers on 1-2 cores (they cost more than they
    save), else one per core left to the training process, at most 8."""
    if requested is not None:
        return int(requested)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


class Batch(NamedTuple):
    """Images [B, 3, H, W], labels [B], dataset indices [B] and the size of the global batch."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    global_size: int


class ImageDataset(Dataset):
    """Samples (``path``, ``label``) read with Pillow and transformed; an item is
    ``(transform(image), label, index, global_batch_size)`` (the image itself without a transform).

    Items are dataset indices, or ``(index, aug_seed, global_size)`` from :class:`EpochBatchSampler`;
    with a seed, a transform that takes a ``generator`` keyword (the CLIP transforms) is called as
    ``transform(img, generator=...)`` so augmentation is exact.
    An unreadable image raises :class:`~mmprompt.data.errors.CorruptImageError` naming it, or is skipped
    (``None``, dropped by :func:`collate`) with ``skip_corrupt``; callers normally check the files first
    with :func:`mmprompt.data.validate_samples`.
    """

    def __init__(
        self,
        samples: Sequence[Any],
        transform: Callable[..., Any] | None,
        image_dir: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.skip_corrupt = skip_corrupt
        self._seeded = transform is not None and _takes_generator(transform)

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> Path:
        p = Path(self.samples[index].path)
        return p if self.image_dir is None or p.is_absolute() else self.image_dir / p

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple[Any, int, int, int] | None:
        index, seed, global_size = item if isinstance(item, tuple) else (item, None, 0)
        path = self.path(index)
        try:
            img = load_image(path)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            logger.warning("skipping unreadable image %s", path)
            return None
        if self.transform is None:
            x = img
        elif seed is None or not self._seeded:
            x = self.transform(img)
        else:
            x = self.transform(img, generator=torch.Generator().manual_seed(seed))
        return x, int(self.samples[index].label), index, global_size


def _takes_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def collate(items: Sequence[tuple[Tensor, int, int, int] | None]) -> Batch | None:
    """Stack the readable items of a batch (None when none was readable)."""
    kept = [it for it in items if it is not None]
    if not kept:
        return None
    images = torch.stack([it[0] for it in kept])
    labels = torch.tensor([it[1] for it in kept], dtype=torch.long)
    indices = torch.tensor([it[2] for it in kept], dtype=torch.long)
    return Batch(images, labels, indices, max(it[3] for it in kept) or len(kept))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> tuple[list[int], list[int]]:
    """The (indices, augmentation seeds) of one epoch, a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) & _MASK63)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    aug = torch.randint(0, 1 << 62, (n,), generator=g)
    return order.tolist(), aug.tolist()


class EpochBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Global batches from :func:`epoch_order`, this process's contiguous slice of each.

    ``drop_last`` drops the last incomplete global batch. Slices of one global batch differ in size by at
    most one; each item carries the global batch size so the loss can be normalised by it.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n < world_size:
            raise ValueError(f"{n} training samples cannot be shared by {world_size} processes")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[tuple[int, int]]]:
        order, aug = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        items = list(zip(order, aug, strict=True))
        batches = [items[i : i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        if self.drop_last and batches and len(batches[-1]) < self.global_batch:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.global_batches():
            size = len(batch)
            per, extra = divmod(size, self.world_size)
            start = self.rank * per + min(self.rank, extra)
            stop = start + per + (1 if self.rank < extra else 0)
            yield [(i, s, size) for i, s in batch[start:stop]]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)


def train_loader(
    dataset: ImageDataset,
    batch_size: int,
    seed: int,
    num_workers: int | None = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, EpochBatchSampler]:
    """Training loader (random order; drop_last when there are at least ``batch_size`` samples).

    ``batch_size`` is the global batch; call ``sampler.set_epoch(e)`` before each epoch.
    """
    sampler = EpochBatchSampler(
        len(dataset), batch_size, seed, shuffle=True, drop_last=len(dataset) >= batch_size,
        rank=rank, world_size=world_size,
    )
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=default_workers(num_workers), collate_fn=collate,
        pin_memory=pin_memory,
    )
    return loader, sampler


def eval_loader(
    dataset: ImageDataset, batch_size: int, num_workers: int | None = 0, rank: int = 0, world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Evaluation loader in dataset order; with several processes each reads every ``world_size``-th item."""
    indices = list(range(rank, len(dataset), world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=default_workers(num_workers), collate_fn=collate,
        pin_memory=pin_memory,
    )


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random``, NumPy and torch in each worker from the loader's generator
    (for transforms that use the global random state)."""
    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, drawn from the loader's generator
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(
    samples: Sequence[Any],
    transform: Callable[..., Any],
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int | None = 0,
    seed: int = 0,
    skip_corrupt: bool = False,
    *,
    image_dir: str | os.PathLike[str] | None = None,
    check_files: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of :class:`Batch` es for your own loops, on the same dataset and sampler as training.

    The order is a function of (``seed``, epoch): call ``loader.batch_sampler.set_epoch(e)`` before each
    epoch for a new shuffle. ``drop_last`` applies only when there are at least ``batch_size`` samples
    (Dassl's rule). Before loading, every file is checked to exist (``check_files``), or, with
    ``skip_corrupt``, decoded and the unreadable ones left out.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not samples:
        raise DataError("no samples to load")
    if skip_corrupt:
        samples, _ = validate_samples(samples, skip_corrupt=True, image_dir=image_dir)
    elif check_files:
        validate_samples(samples, skip_corrupt=False, image_dir=image_dir, decode=False)
    sampler = EpochBatchSampler(len(samples), batch_size, seed, shuffle=shuffle,
                                drop_last=drop_last and len(samples) >= batch_size)
    return DataLoader(
        ImageDataset(samples, transform, image_dir), batch_sampler=sampler, num_workers=default_workers(num_workers),
        collate_fn=collate, worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )
