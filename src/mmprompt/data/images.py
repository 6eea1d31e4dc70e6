"""Decoding images and checking them before a run (no torch needed)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from mmprompt.data.errors import CorruptImageError
from mmprompt.data.samples import Sample

log = logging.getLogger(__name__)

_SHOWN = 10  # paths listed in an error message before "... and N more"


def resolve_path(sample: Sample, image_dir: str | os.PathLike[str] | None) -> Path:
    return sample.resolve(image_dir) if image_dir is not None else Path(sample.path)


HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
"""Pillow modes with more than 8 bits per sample (16-bit grey PNG/TIFF, 32-bit integer or float)."""


def _high_bit_to_rgb(im: Image.Image) -> Image.Image:
    """A 16/32-bit grey image scaled to 8 bits (Pillow's own ``convert`` clips it: all white)."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        scale = 65535.0
    elif im.mode == "F":
        scale = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
    else:  # "I": 16-bit content unless it fits in 8 bits
        scale = 65535.0 if arr.size and float(arr.max()) > 255 else 255.0
    grey = np.clip(np.nan_to_num(arr) * (255.0 / scale) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Pillow image -> RGB as the official pipeline does it (``convert("RGB")``: transparency is dropped,
    not composited), except that high-bit-depth grey images are scaled to 8 bits instead of clipped."""
    if im.mode in HIGH_BIT_MODES:
        return _high_bit_to_rgb(im)
    return im.convert("RGB")


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotAFileError(CorruptImageError):
    """An image path names something other than a regular file (a FIFO, a device, a folder)."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; anything else (a FIFO, whose reading would wait
    forever for a writer, a device, a socket, a folder) is refused by type before a byte is read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, without a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotAFileError(f"{path} is {kind}, not an image file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _out_of_memory(path: str | os.PathLike[str], im: Image.Image) -> CorruptImageError:
    w, h = im.size
    return CorruptImageError(f"not enough memory to decode {path} ({w} x {h} pixels, mode {im.mode}): resize it, "
                             "or free memory")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image to RGB (see :func:`to_rgb`), or raise :class:`CorruptImageError` naming the file."""
    try:
        with open_regular(path) as f, Image.open(f) as im:
            try:
                return to_rgb(im)
            except MemoryError:
                raise _out_of_memory(path, im) from None
    except CorruptImageError:
        raise
    except FileNotFoundError as e:
        raise CorruptImageError(f"image file is missing: {path}") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot decode image {path}: {e}") from e


def probe_image(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """``(mode, None)`` when ``path`` decodes, else ``(None, reason)``; reads the whole image."""
    try:
        with open_regular(path) as f, Image.open(f) as im:
            mode = im.mode
            try:
                im.load()
            except MemoryError:
                return None, str(_out_of_memory(path, im))
        return mode, None
    except NotAFileError as e:
        return None, str(e)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"cannot decode: {e}"


def _summarise(paths: Sequence[str]) -> str:
    shown = "\n  ".join(paths[:_SHOWN])
    more = f"\n  ... and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return f"\n  {shown}{more}"


def validate_samples(
    samples: Sequence[Sample],
    skip_corrupt: bool,
    image_dir: str | os.PathLike[str] | None = None,
    decode: bool = True,
) -> tuple[list[Sample], list[str]]:
    """Check that every image exists (and decodes, with ``decode``); returns ``(kept, skipped_paths)``.

    Without ``skip_corrupt`` any bad image raises :class:`CorruptImageError` listing them. With it, bad
    images are dropped, counted and logged; a class that loses all its images is always an error.
    Decoding is :func:`mmprompt.data.preflight.check_images` (parallel, cached).
    """
    if decode:
        from mmprompt.data.preflight import check_images

        found = check_images(samples, image_dir, what="images", skip_corrupt=skip_corrupt)
        return found.kept, [p for p, _ in found.bad]
    kept = [s for s in samples if resolve_path(s, image_dir).is_file()]
    missing = [str(resolve_path(s, image_dir)) for s in samples if not resolve_path(s, image_dir).is_file()]
    if missing and skip_corrupt:
        log.warning("left out %d missing image(s) of %d:%s", len(missing), len(samples), _summarise(missing))
        return kept, missing
    if missing:
        raise CorruptImageError(
            f"{len(missing)} of {len(samples)} images are missing:{_summarise(missing)}\n"
            "Fix or re-download them, or pass --skip-corrupt to leave them out."
        )
    return list(samples), []
