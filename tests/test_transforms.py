"""CLIP image transforms: torchvision's sizes, offsets and random draws, reproduced with Pillow + torch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmprompt.clip.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    EvalTransform,
    TrainTransform,
    build_transform,
    center_crop,
    normalize,
    random_horizontal_flip,
    random_resized_crop,
    random_resized_crop_params,
    resize_shorter,
    resized_output_size,
    to_tensor,
)


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)


def coordinate_image(width: int, height: int) -> Image.Image:
    """R = x, G = y, B = 255 (so zero padding is recognisable)."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x % 256, y % 256, np.full_like(x, 255)], axis=-1).astype(np.uint8)
    return Image.fromarray(array, "RGB")


# (width, height, size) -> (new width, new height), worked out by hand from
# shorter side = size, longer side = int(size * long / short).
RESIZE_CASES = [
    ((37, 101, 224), (224, 611)),  # 224 * 101 / 37 = 611.46
    ((101, 37, 64), (174, 64)),  # 64 * 101 / 37 = 174.70
    ((300, 224, 224), (300, 224)),  # already the size: unchanged
    ((225, 225, 224), (224, 224)),
    ((10, 500, 224), (224, 11200)),
    ((500, 10, 224), (11200, 224)),
    ((100, 33, 50), (151, 50)),  # 50 * 100 / 33 = 151.52
    ((3, 2, 7), (10, 7)),  # upscaling: 7 * 3 / 2 = 10.5
]


@pytest.mark.parametrize(("args", "expected"), RESIZE_CASES)
def test_resized_output_size(args: tuple[int, int, int], expected: tuple[int, int]) -> None:
    width, height, size = args
    new_h, new_w = resized_output_size(height, width, size)
    assert (new_w, new_h) == expected


@pytest.mark.parametrize(("args", "expected"), [c for c in RESIZE_CASES if max(c[1]) < 1000])
def test_resize_shorter(args: tuple[int, int, int], expected: tuple[int, int]) -> None:
    width, height, size = args
    img = random_image(width, height)
    out = resize_shorter(img, size)
    assert out.size == expected
    if expected == (width, height):
        assert out is img
    else:
        assert np.array_equal(np.asarray(out), np.asarray(img.resize(expected, Image.Resampling.BICUBIC)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 512))
def test_resized_output_size_property(width: int, height: int, size: int) -> None:
    new_h, new_w = resized_output_size(height, width, size)
    assert min(new_h, new_w) == size
    short, long = sorted((width, height))
    new_long = max(new_h, new_w)
    assert new_long <= size * long / short + 1e-9 < new_long + 1


# (width, height, size) -> (left, top) of the crop, by hand: round((w - size) / 2) with Python's
# round-half-to-even, so 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 193.5 -> 194.
CROP_CASES = [
    ((224, 611, 224), (0, 194)),
    ((225, 225, 224), (0, 0)),
    ((227, 229, 224), (2, 2)),
    ((300, 224, 224), (38, 0)),
    ((101, 37, 31), (35, 3)),
    ((37, 101, 36), (0, 32)),
]


@pytest.mark.parametrize(("args", "offset"), CROP_CASES)
def test_center_crop_offsets(args: tuple[int, int, int], offset: tuple[int, int]) -> None:
    width, height, size = args
    left, top = offset
    img = coordinate_image(width, height)
    out = center_crop(img, size)
    assert out.size == (size, size)
    expected = np.asarray(img)[top : top + size, left : left + size]
    assert np.array_equal(np.asarray(out), expected)


# Smaller than the crop: zero padding (size - n) // 2 before and (size - n + 1) // 2 after, then crop.
# (width, height, size) -> (x where the image starts, y where it starts, first image column, first row)
PAD_CASES = [
    ((10, 500, 224), (107, 0, 0, 138)),  # pad 107 + 107 columns, top = round(276 / 2) = 138
    ((5, 4, 8), (1, 2, 0, 0)),  # pad 1 + 2 columns, 2 + 2 rows
    ((7, 300, 10), (1, 0, 0, 145)),  # pad 1 + 2 columns, top = round(290 / 2) = 145
    ((41, 6, 16), (0, 5, 12, 0)),  # pad 5 + 5 rows, left = round(25 / 2) = 12
]


@pytest.mark.parametrize(("args", "placement"), PAD_CASES)
def test_center_crop_pads_small_images(
    args: tuple[int, int, int], placement: tuple[int, int, int, int]
) -> None:
    width, height, size = args
    x0, y0, col0, row0 = placement
    img = coordinate_image(width, height)
    out = np.asarray(center_crop(img, size))
    assert out.shape == (size, size, 3)
    source = np.asarray(img)
    expected = np.zeros((size, size, 3), dtype=np.uint8)
    w = min(width, size)
    h = min(height, size)
    expected[y0 : y0 + h, x0 : x0 + w] = source[row0 : row0 + h, col0 : col0 + w]
    assert np.array_equal(out, expected)


def test_to_tensor_and_normalize() -> None:
    img = random_image(5, 3)
    t = to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 3, 5)
    assert torch.equal(t, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    assert to_tensor(img.convert("L")).shape == (1, 3, 5)
    with pytest.raises(TypeError):
        to_tensor(Image.new("I;16", (2, 2)))
    n = normalize(t, CLIP_MEAN, CLIP_STD)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.equal(n, (t - mean) / std)
    with pytest.raises(ValueError):
        normalize(t, (0.0, 0.0, 0.0), (1.0, 0.0, 1.0))


@pytest.mark.parametrize(("width", "height"), [(97, 131), (131, 97), (64, 64), (40, 200)])
def test_eval_transform_matches_manual_pipeline(width: int, height: int) -> None:
    size = 64
    img = random_image(width, height, seed=width)
    out = EvalTransform(size)(img)
    assert out.dtype == torch.float32 and out.shape == (3, size, size)
    # by hand: shorter side -> 64 with PIL bicubic, numpy slice at round((L - 64) / 2), then normalise
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    resized = img if new_size == img.size else img.resize(new_size, Image.Resampling.BICUBIC)
    array = np.asarray(resized)
    top = int(round((array.shape[0] - size) / 2))
    left = int(round((array.shape[1] - size) / 2))
    crop = array[top : top + size, left : left + size].astype(np.float32) / np.float32(255)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    expected = ((crop - mean) / std).transpose(2, 0, 1)
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(expected)))


def test_transforms_convert_to_rgb() -> None:
    gray = random_image(70, 80, mode="L")
    rgba = random_image(70, 80, mode="RGBA")
    for img in (gray, rgba):
        assert torch.equal(EvalTransform(32)(img), EvalTransform(32)(img.convert("RGB")))
        assert TrainTransform(32)(img, torch.Generator().manual_seed(3)).shape == (3, 32, 32)


def test_train_transform_shape_and_determinism() -> None:
    img = random_image(120, 90)
    transform = TrainTransform(48)
    torch.manual_seed(0)
    a = transform(img)
    b = transform(img)
    torch.manual_seed(0)
    c = transform(img)
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, c)
    assert not torch.equal(a, b)
    # an explicit generator gives the same result and leaves the global RNG alone
    state = torch.get_rng_state()
    d = transform(img, torch.Generator().manual_seed(5))
    e = transform(img, torch.Generator().manual_seed(5))
    assert torch.equal(d, e)
    assert torch.equal(state, torch.get_rng_state())


def test_random_resized_crop_is_crop_then_resize() -> None:
    img = random_image(150, 100)
    for seed in range(5):
        params = random_resized_crop_params(100, 150, generator=torch.Generator().manual_seed(seed))
        top, left, h, w = params
        out = random_resized_crop(img, 40, generator=torch.Generator().manual_seed(seed))
        expected = img.crop((left, top, left + w, top + h)).resize((40, 40), Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_random_resized_crop_params_bounds() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_params(200, 300, generator=generator)
        assert 0 < h and 0 < w and 0 <= top <= 200 - h and 0 <= left <= 300 - w
        # area within scale and ratio within bounds, up to the rounding of w and h
        assert 0.08 * 60000 * 0.9 <= h * w <= 60000
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


@pytest.mark.parametrize(
    ("height", "width", "scale", "expected"),
    [
        # too tall for any sampled crop: ratio clamped to 3/4, w = 10, h = round(10 / 0.75) = 13
        (500, 10, (0.08, 1.0), (243, 0, 13, 10)),
        # too wide: h = 10, w = round(10 * 4 / 3) = 13, left = (500 - 13) // 2
        (10, 500, (0.08, 1.0), (0, 243, 10, 13)),
        # crops larger than the image never fit: whole image when its ratio is within bounds
        (50, 60, (2.0, 3.0), (0, 0, 50, 60)),
    ],
)
def test_random_resized_crop_fallback(
    height: int, width: int, scale: tuple[float, float], expected: tuple[int, int, int, int]
) -> None:
    for seed in range(3):
        params = random_resized_crop_params(
            height, width, scale, generator=torch.Generator().manual_seed(seed)
        )
        assert params == expected
    img = coordinate_image(width, height)
    out = random_resized_crop(img, 13, scale)
    top, left, h, w = expected
    manual = img.crop((left, top, left + w, top + h))
    if manual.size != (13, 13):
        manual = manual.resize((13, 13), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(manual))


def test_horizontal_flip_probability() -> None:
    img = coordinate_image(2, 1)
    flipped = np.asarray(img)[:, ::-1]
    generator = torch.Generator().manual_seed(0)
    n_flips = 0
    for _ in range(2000):
        out = np.asarray(random_horizontal_flip(img, 0.5, generator))
        if np.array_equal(out, flipped):
            n_flips += 1
        else:
            assert np.array_equal(out, np.asarray(img))
    assert 900 < n_flips < 1100
    assert random_horizontal_flip(img, 0.0) is img
    assert np.array_equal(np.asarray(random_horizontal_flip(img, 1.0)), flipped)


def test_build_transform_and_pickle() -> None:
    eval_t = build_transform(32, train=False)
    train_t = build_transform(32, train=True, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert isinstance(eval_t, EvalTransform) and eval_t.mean == CLIP_MEAN
    assert isinstance(train_t, TrainTransform) and train_t.std == (0.25, 0.25, 0.25)
    img = random_image(50, 40)
    for transform in (eval_t, train_t):
        clone = pickle.loads(pickle.dumps(transform))
        assert clone == transform
        torch.manual_seed(1)
        a = transform(img)
        torch.manual_seed(1)
        assert torch.equal(a, clone(img))


def test_validation() -> None:
    with pytest.raises(ValueError):
        EvalTransform(0)
    with pytest.raises(ValueError):
        EvalTransform(32, mean=(0.5, 0.5))
    with pytest.raises(ValueError):
        TrainTransform(32, flip_p=1.5)
    with pytest.raises(ValueError):
        center_crop(random_image(4, 4), -1)
