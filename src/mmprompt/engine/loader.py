"""The training and evaluation loaders: :mod:`mmprompt.data.loading` is the one image-loading path."""

from __future__ import annotations

from ..data.loading import (
    Batch,
    EpochBatchSampler,
    ImageDataset,
    collate,
    default_workers,
    epoch_order,
    eval_loader,
    train_loader,
)

__all__ = ["Batch", "EpochBatchSampler", "ImageDataset", "collate", "default_workers", "epoch_order", "eval_loader",
           "train_loader"]
