"""A tiny procedural renderer: one coloured shape on a background, in two rendering styles.

A :class:`Scene` says what is shown (shape, colour, size, pattern, background, filled or outline); a
:class:`RenderStyle` says how it is photographed. Two styles ship:

* :data:`PRETRAIN_STYLE` (used by ``scripts/pretrain_demo_clip.py``): shapes near the centre on plain or
  gradient neutral backgrounds with a little pixel noise.
* :data:`DEMO_STYLE` (used by :mod:`mmprompt.demo.world`): the same scenes off-centre, on textured and
  cluttered backgrounds, with strong noise, larger colour variation and a colour cast: a domain shift
  that prompt learning has to adapt to.

Everything random is drawn from an explicit ``numpy.random.Generator``, so a seed fixes every pixel.
Shapes are drawn on a supersampled canvas with Pillow and reduced with a box filter (anti-aliasing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DEMO_STYLE",
    "PATTERNS",
    "PRETRAIN_STYLE",
    "SHAPES",
    "SIZES",
    "RenderStyle",
    "Scene",
    "render_scene",
    "sample_scene",
    "shape_mask",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "purple": (130, 45, 175),
    "pink": (245, 125, 185),
    "brown": (120, 75, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
"""Shape colours by name (the names are single tokens of CLIP's vocabulary)."""

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart", "crescent", "arrow",
)
"""Shape names (single tokens of CLIP's vocabulary)."""

SIZES: dict[str, tuple[float, float]] = {"small": (0.17, 0.24), "medium": (0.26, 0.33), "large": (0.35, 0.44)}
"""Shape radius as a fraction of the image side, per size name."""

PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
"""How a filled shape is painted."""

BACKGROUNDS: dict[str, tuple[int, int]] = {"dark": (0, 60), "gray": (95, 155), "light": (195, 255)}
"""Neutral backgrounds by name: the range of their grey level."""

# Colours that do not stand out on a neutral background.
_INVISIBLE_ON: dict[str, frozenset[str]] = {"dark": frozenset({"black", "brown"}), "light": frozenset({"white"}),
                                            "gray": frozenset()}


@dataclass(frozen=True)
class Scene:
    """What an image shows: one shape and its attributes."""

    shape: str
    colour: str
    size: str = "medium"
    pattern: str = "plain"
    background: str = "gray"
    """A key of :data:`BACKGROUNDS`."""
    outline: bool = False
    """Draw only a band inside the shape's edge (a hollow shape) instead of filling it."""


@dataclass(frozen=True)
class RenderStyle:
    """How scenes are drawn. Every field is a knob of the domain (and of its difficulty)."""

    stroke: tuple[float, float] = (0.25, 0.4)
    """Range of the stroke of outline scenes, as a fraction of the radius."""
    gradient_p: float = 0.3
    """Probability of a linear gradient instead of a flat background."""
    clutter: int = 0
    """Up to this many random distractor strokes (lines and blobs in random colours) behind the shape."""
    texture: float = 0.0
    """Amplitude (grey levels) of low-frequency colour noise added to the background."""
    noise: float = 4.0
    """Standard deviation (grey levels) of per-pixel Gaussian noise on the final image."""
    colour_jitter: float = 18.0
    """Standard deviation (grey levels) of the per-image shift of the shape colour, per channel."""
    colour_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """A fixed shift added to every shape colour (a colour cast of the domain)."""
    rotation: float = 6.0
    """Maximum absolute rotation in degrees (kept small: a rotated square is a diamond)."""
    offset: float = 0.03
    """Maximum shift of the shape centre from the image centre, as a fraction of the side. A tiny ViT
    learns shapes far faster when they stay near the centre (patches then see the same parts)."""
    scale: float = 1.0
    """Multiplier of the radius ranges of :data:`SIZES`."""
    supersample: int = 4


PRETRAIN_STYLE = RenderStyle()
DEMO_STYLE = RenderStyle(
    stroke=(0.2, 0.35),
    gradient_p=0.5,
    clutter=2,
    texture=20.0,
    noise=10.0,
    colour_jitter=25.0,
    colour_tint=(-70.0, -10.0, 70.0),
    rotation=10.0,
    offset=0.08,
    scale=0.95,
)
"""The demo world's camera: a strong blue colour cast (red reads as purple, yellow as grey-green), noisy
textured and cluttered backgrounds, shapes off-centre. Zero-shot colour names suffer most."""


def _polygon(shape: str, n_points: int = 64) -> np.ndarray:
    """Vertices [N, 2] of a shape of radius about 1 around the origin (y pointing down)."""
    if shape == "square":
        s = 0.8
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.72, 0.0], [0.0, 1.0], [-0.72, 0.0]])
    if shape == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(a), np.sin(a) + 0.15], axis=1)
    if shape == "hexagon":
        a = np.deg2rad(np.arange(6) * 60.0)
        return np.stack([np.cos(a), np.sin(a)], axis=1) * 0.95
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36.0 - 90.0)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a) + 0.08], axis=1)
    if shape == "cross":
        w, e = 0.32, 0.95
        return np.array([[-w, -e], [w, -e], [w, -w], [e, -w], [e, w], [w, w], [w, e], [-w, e], [-w, w], [-e, w],
                         [-e, -w], [-w, -w]])
    if shape == "heart":
        t = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 16.5
    if shape == "arrow":
        return np.array([[-0.95, -0.25], [0.15, -0.25], [0.15, -0.65], [0.95, 0.0], [0.15, 0.65], [0.15, 0.25],
                         [-0.95, 0.25]])
    raise ValueError(f"no polygon for shape {shape!r}")


def shape_mask(shape: str, side: int, cx: float, cy: float, radius: float, angle: float,
               outline: float = 0.0) -> Image.Image:
    """An 8-bit mask (mode "L", ``side x side``) of a shape centred at ``(cx, cy)`` pixels.

    ``angle`` is in degrees; ``outline`` > 0 keeps only a band of that fraction of the radius inside the edge.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        r = radius * 0.92
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "crescent":
        r = radius * 0.95
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        a = math.radians(angle)
        ox, oy = cx + 0.55 * r * math.cos(a), cy + 0.55 * r * math.sin(a) - 0.2 * r
        r2 = r * 0.85
        draw.ellipse([ox - r2, oy - r2, ox + r2, oy + r2], fill=0)
    else:
        a = math.radians(angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = (_polygon(shape) @ rot.T) * radius + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    if outline > 0:
        # Hollow: remove the same shape shrunk by the stroke (about its centre).
        inner = shape_mask(shape, side, cx, cy, radius * (1.0 - outline), angle)
        mask = ImageChops.subtract(mask, inner)
    return mask


def _background(scene: Scene, style: RenderStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background as float [size, size, 3]: a neutral level, maybe a gradient, maybe coloured texture."""
    lo, hi = BACKGROUNDS[scene.background]
    base = rng.uniform(lo, hi) + rng.normal(0.0, 6.0, size=3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if rng.random() < style.gradient_p:
        theta = rng.uniform(0.0, 2.0 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
        ramp = (np.cos(theta) * xx + np.sin(theta) * yy)[..., None]
        img += ramp * rng.uniform(20.0, 50.0)
    if style.texture > 0:
        coarse = Image.fromarray(np.clip(128 + 60 * rng.normal(0.0, 1.0, size=(4, 4, 3)), 0, 255).astype(np.uint8))
        up = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        img += (up - 128.0) / 60.0 * style.texture * 0.5
    return img


def _paint(scene: Scene, style: RenderStyle, side: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The shape's paint as float [size, size, 3] (patterns are drawn at ``side`` and reduced)."""
    rgb = np.array(COLOURS[scene.colour], dtype=float) + np.array(style.colour_tint)
    rgb = np.clip(rgb + rng.normal(0.0, style.colour_jitter, size=3), 0.0, 255.0)
    if scene.pattern == "plain":
        return np.broadcast_to(rgb, (size, size, 3))
    # The second paint: the same hue, much darker (or lighter for dark colours).
    second = rgb * 0.35 if rgb.mean() > 90 else rgb * 0.4 + 150
    if scene.pattern == "striped":
        period = side / rng.uniform(4.5, 6.5)
        theta = rng.uniform(0.0, np.pi)
        yy, xx = np.mgrid[0:side, 0:side]
        phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period
        band = Image.fromarray(((phase - np.floor(phase)) < 0.45).astype(np.uint8) * 255)
    elif scene.pattern == "dotted":
        band = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(band)
        step = side / rng.uniform(5.0, 7.0)
        r = step * 0.28
        off = rng.uniform(0.0, step, size=2)
        for y in np.arange(off[1] - step, side + step, step).tolist():
            for x in np.arange(off[0] - step, side + step, step).tolist():
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    else:
        raise ValueError(f"unknown pattern {scene.pattern!r}; known: {PATTERNS}")
    t = _reduce(band, size)[..., None]
    return rgb * (1.0 - t) + second * t


def _reduce(mask: Image.Image, size: int) -> np.ndarray:
    """A mode "L" image box-filtered to ``size x size``, as float [size, size] in [0, 1]."""
    if mask.width != size:
        mask = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float64) / 255.0


def _clutter(img: Image.Image, count: int, rng: np.random.Generator) -> None:
    """Draw ``count`` random distractor strokes (lines or small rings) in random colours onto ``img``."""
    side = img.width
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.6:
            x0, y0, x1, y1 = (rng.uniform(0, side, size=4)).tolist()
            draw.line([x0, y0, x1, y1], fill=colour, width=1)
        else:
            cx, cy = rng.uniform(0, side, size=2).tolist()
            r = side * rng.uniform(0.05, 0.12)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=1)


def render_scene(scene: Scene, style: RenderStyle, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Draw ``scene`` in ``style`` as an RGB image of ``size x size`` pixels.

    The shape's mask (and pattern) are drawn at ``size * style.supersample`` and box-filtered, then
    blended over the background drawn at ``size``.
    """
    if scene.colour not in COLOURS:
        raise ValueError(f"unknown colour {scene.colour!r}; known: {sorted(COLOURS)}")
    if scene.size not in SIZES:
        raise ValueError(f"unknown size {scene.size!r}; known: {sorted(SIZES)}")
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}; known: {sorted(BACKGROUNDS)}")
    side = size * style.supersample
    lo, hi = SIZES[scene.size]
    radius = rng.uniform(lo, hi) * style.scale * side
    cx, cy = (0.5 + rng.uniform(-style.offset, style.offset, size=2)) * side
    angle = float(rng.uniform(-style.rotation, style.rotation))
    bg = _background(scene, style, size, rng)
    if style.clutter > 0:
        canvas = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8))
        _clutter(canvas, int(rng.integers(0, style.clutter + 1)), rng)
        bg = np.asarray(canvas, dtype=np.float64)
    stroke = float(rng.uniform(*style.stroke)) if scene.outline else 0.0
    alpha = _reduce(shape_mask(scene.shape, side, float(cx), float(cy), float(radius), angle, stroke), size)
    img = bg * (1.0 - alpha[..., None]) + _paint(scene, style, side, size, rng) * alpha[..., None]
    if style.noise > 0:
        img = img + rng.normal(0.0, style.noise, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def sample_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 pattern_p: float = 0.35, outline_p: float = 0.0) -> Scene:
    """A random scene (shape, colour, size, pattern, background, outline), shape and colour fixed if given.

    Outline scenes (probability ``outline_p``) are never patterned. The background is never one the colour
    disappears on (no black shape on a dark background).
    """
    shape = shape if shape is not None else SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour if colour is not None else list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    outline = bool(rng.random() < outline_p)
    pattern = "plain"
    if not outline and rng.random() < pattern_p:
        pattern = PATTERNS[1 + int(rng.integers(len(PATTERNS) - 1))]
    backgrounds = [b for b in BACKGROUNDS if colour not in _INVISIBLE_ON[b]]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    return Scene(shape=shape, colour=colour, size=size, pattern=pattern, background=background, outline=outline)


def with_style(style: RenderStyle, **changes: float) -> RenderStyle:
    """A copy of ``style`` with some knobs changed (for tuning the difficulty of a world)."""
    return replace(style, **changes)
