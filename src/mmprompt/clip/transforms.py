"""CLIP image preprocessing with Pillow and torch, reproducing torchvision's arithmetic on PIL images.

Eval: resize the shorter side -> center crop -> [0, 1] tensor -> normalise (CLIP); or, for weights released
with a squash resize (DFN, SigLIP), resize both sides to the size, no crop.
Train: random resized crop -> random horizontal flip -> [0, 1] tensor -> normalise.
The interpolation (bicubic unless the weights say bilinear), resize mode and statistics of loaded weights
come with them (:attr:`mmprompt.clip.config.CLIPConfig.image_preprocess`); :func:`transform_for` builds
the transform from a model's config.

Randomness comes from torch's global RNG (so ``torch.manual_seed`` and DataLoader worker seeding control it),
or from an explicit ``torch.Generator``. Each step draws the same numbers in the same order as torchvision's
``RandomResizedCrop`` / ``RandomHorizontalFlip``, so a seeded run picks the same crops and flips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from .config import CLIPConfig

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EvalTransform",
    "TrainTransform",
    "build_transform",
    "center_crop",
    "normalize",
    "random_horizontal_flip",
    "random_resized_crop",
    "random_resized_crop_params",
    "resize_shorter",
    "resized_output_size",
    "squash",
    "to_tensor",
    "transform_for",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "squash")


def _resampling(name: str) -> Image.Resampling:
    if name not in _RESAMPLING:
        raise ValueError(f"interpolation must be one of {tuple(_RESAMPLING)}, got {name!r}")
    return _RESAMPLING[name]


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")


def resized_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(new_h, new_w)`` with the shorter side ``size`` and the longer ``int(size * long / short)``."""
    _check_size(size)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so that the shorter side is ``size`` (torchvision ``Resize(size)``); no-op if already."""
    new_h, new_w = resized_output_size(img.height, img.width, size)
    if (new_h, new_w) == (img.height, img.width):
        return img
    return img.resize((new_w, new_h), _resampling(interpolation))


def squash(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize to ``size x size`` without keeping the aspect ratio (open_clip ``resize_mode="squash"``,
    Hugging Face ``size={"height", "width"}``); no-op if already."""
    _check_size(size)
    if img.size == (size, size):
        return img
    return img.resize((size, size), _resampling(interpolation))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Central ``size x size`` crop; a side smaller than ``size`` is first zero-padded on both ends.

    Offsets are ``int(round((h - size) / 2))`` and ``int(round((w - size) / 2))`` (Python's round),
    padding is ``(size - w) // 2`` left / ``(size - w + 1) // 2`` right (likewise top / bottom).
    """
    _check_size(size)
    width, height = img.size
    if size > width or size > height:
        pad_left = (size - width) // 2 if size > width else 0
        pad_top = (size - height) // 2 if size > height else 0
        padded = Image.new(img.mode, (max(width, size), max(height, size)), 0)
        if img.mode == "P" and (palette := img.getpalette()) is not None:
            padded.putpalette(palette)
        padded.paste(img, (pad_left, pad_top))
        img = padded
        width, height = img.size
        if width == size and height == size:
            return img
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit PIL image -> float32 ``[C, H, W]`` tensor in [0, 1] (``uint8 / 255``)."""
    array = np.array(img, copy=True)
    if array.dtype != np.uint8:
        raise TypeError(f"to_tensor expects an 8-bit image, got mode {img.mode!r} ({array.dtype})")
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [C, H, W]
    return tensor.to(torch.float32).div(255)


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(tensor - mean) / std`` per channel of a ``[C, H, W]`` (or ``[..., C, H, W]``) float tensor."""
    if not tensor.is_floating_point():
        raise TypeError(f"normalize expects a float tensor, got {tensor.dtype}")
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if (std_t == 0).any():
        raise ValueError(f"std must not contain zeros, got {tuple(std)}")
    return (tensor - mean_t.view(-1, 1, 1)) / std_t.view(-1, 1, 1)


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop, torchvision's ``RandomResizedCrop.get_params``.

    Up to 10 tries draw an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; the
    first crop that fits gets a uniform position. Otherwise: a central crop of the whole image with its
    aspect ratio clamped to ``ratio``.
    """
    if scale[0] > scale[1] or ratio[0] > ratio[1]:
        raise ValueError(f"scale and ratio must be (min, max), got scale={scale}, ratio={ratio}")
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Image.Image,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    interpolation: str = "bicubic",
) -> Image.Image:
    """A random crop (:func:`random_resized_crop_params`) resized to ``size x size``."""
    _check_size(size)
    top, left, h, w = random_resized_crop_params(img.height, img.width, scale, ratio, generator)
    img = img.crop((left, top, left + w, top + h))
    if img.size == (size, size):
        return img
    return img.resize((size, size), _resampling(interpolation))


def random_horizontal_flip(
    img: Image.Image, p: float = 0.5, generator: torch.Generator | None = None
) -> Image.Image:
    """Mirror left-right with probability ``p`` (one ``torch.rand(1)`` draw)."""
    if torch.rand(1, generator=generator) < p:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class EvalTransform:
    """Eval preprocessing: RGB -> resize shorter side -> center crop (``resize_mode="shortest"``) or resize
    both sides (``"squash"``) -> tensor -> normalise.

    Returns a float32 ``[3, size, size]`` tensor.
    """

    size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _check_size(self.size)
        _check_stats(self.mean, self.std)
        _resampling(self.interpolation)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = _to_rgb(img)
        if self.resize_mode == "squash":
            img = squash(img, self.size, self.interpolation)
        else:
            img = center_crop(resize_shorter(img, self.size, self.interpolation), self.size)
        return normalize(to_tensor(img), self.mean, self.std)  # [3, size, size]


@dataclass(frozen=True)
class TrainTransform:
    """Train preprocessing: RGB -> random resized crop -> random flip -> tensor -> normalise.

    Returns a float32 ``[3, size, size]`` tensor. Uses torch's global RNG unless a generator is passed.
    """

    size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _check_size(self.size)
        _check_stats(self.mean, self.std)
        _resampling(self.interpolation)
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be 0 < min <= max, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be 0 < min <= max, got {self.ratio}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = random_resized_crop(_to_rgb(img), self.size, self.scale, self.ratio, generator, self.interpolation)
        img = random_horizontal_flip(img, self.flip_p, generator)
        return normalize(to_tensor(img), self.mean, self.std)  # [3, size, size]


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {tuple(mean)} and {tuple(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}")


def build_transform(
    size: int,
    train: bool,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
) -> EvalTransform | TrainTransform:
    """The train (random crop + flip) or eval (resize + center crop, or squash) transform for ``size``."""
    stats = {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}
    if train:
        return TrainTransform(size=size, interpolation=interpolation, **stats)
    return EvalTransform(size=size, resize_mode=resize_mode, interpolation=interpolation, **stats)


def transform_for(config: CLIPConfig, train: bool, **train_options: Any) -> EvalTransform | TrainTransform:
    """The transform of a model's weights: its resolution, resize mode, interpolation and statistics
    (:attr:`CLIPConfig.image_preprocess`). ``train_options`` (``scale``, ``ratio``, ``flip_p``) go to the
    :class:`TrainTransform`."""
    p = config.image_preprocess
    size = config.vision.image_size
    if train:
        return TrainTransform(size=size, mean=p.mean, std=p.std, interpolation=p.interpolation, **train_options)
    if train_options:
        raise ValueError(f"train options {sorted(train_options)} given for an eval transform")
    return EvalTransform(size=size, mean=p.mean, std=p.std, resize_mode=p.resize_mode, interpolation=p.interpolation)
