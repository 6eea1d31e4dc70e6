"""Errors raised by :mod:`mmprompt.data`; every message names the file or folder to act on."""

from __future__ import annotations


class DataError(ValueError):
    """Base class for dataset problems (a missing folder, a bad split file, an unreadable image)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset folder (or a file the reader needs) is not where the official layout puts it."""


class SplitFileError(DataError):
    """A split file or few-shot cache is malformed, or lists a path outside the dataset folder."""


class CorruptImageError(DataError):
    """An image is missing or cannot be decoded."""
