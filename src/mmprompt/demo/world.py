"""The demo benchmark: coloured outline shapes on cluttered backgrounds, in CoOp's dataset layout.

Classes are colour x shape combinations ("red circle", ...). Every image is a hollow outline shape drawn
in :data:`~mmprompt.demo.render.DEMO_STYLE`: a strong blue colour cast, noisy textured and cluttered
backgrounds, shapes off-centre. The shipped demo CLIP was pretrained on clean, centred images
(:data:`~mmprompt.demo.render.PRETRAIN_STYLE`) of filled shapes ("a photo of a red circle.") and outlines
("an outline of a red circle."), never under a colour cast. Zero-shot CLIP with the plain template works
but is far from perfect, mostly because the cast makes colours read wrong (red looks purple) while the
image features still tell the classes apart: a few-shot classifier on the frozen features does much
better than zero-shot, so prompt learning has room to show gains.

Class order: labels ``0 .. ceil(n/2) - 1`` (the base half of the base-to-novel protocol) are the
combinations with an even ``colour_index + shape_index``, the others are the novel half. Every colour and
every shape therefore appears among both the base and the novel classes, and no novel combination is
seen in training.

On disk (:func:`generate_demo_dataset`)::

    <root>/mmprompt_demo/images/<colour>_<shape>/<split>_<index>.png
    <root>/mmprompt_demo/split_zhou_MMPromptDemo.json   {"train"|"val"|"test": [[path, label, classname], ...]}
    <root>/mmprompt_demo/manifest.json                   what was generated (for idempotence)

Every image is a pure function of ``(seed, split, label, index)``, so asking for more images per class
keeps the first ones unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .render import DEMO_STYLE, RenderStyle, render_scene, sample_scene

__all__ = [
    "DATASET_FOLDER",
    "DEMO_COLOURS",
    "DEMO_IMAGE_SIZE",
    "DEMO_SHAPES",
    "DEMO_TEMPLATE",
    "SPLIT_FILE",
    "demo_classes",
    "demo_classnames",
    "generate_demo_dataset",
    "iter_demo_split",
    "render_demo_image",
]

logger = logging.getLogger(__name__)

DEMO_COLOURS: tuple[str, ...] = ("red", "yellow", "green", "blue", "purple")
DEMO_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")
DEMO_TEMPLATE = "a photo of a {}."
"""The zero-shot template of the demo world (the captions of the pretraining data use it most)."""
DEMO_IMAGE_SIZE = 32
DATASET_FOLDER = "mmprompt_demo"
IMAGE_FOLDER = "images"
SPLIT_FILE = "split_zhou_MMPromptDemo.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def demo_classes() -> list[tuple[str, str]]:
    """The ``(colour, shape)`` of each label, base half first (see the module docstring)."""
    grid = [(ci, si) for ci in range(len(DEMO_COLOURS)) for si in range(len(DEMO_SHAPES))]
    ordered = [p for p in grid if (p[0] + p[1]) % 2 == 0] + [p for p in grid if (p[0] + p[1]) % 2 == 1]
    return [(DEMO_COLOURS[c], DEMO_SHAPES[s]) for c, s in ordered]


def demo_classnames() -> list[str]:
    """Class names by label: ``"red circle"``, ... (25 classes; labels 0-12 are the base half)."""
    return [f"{colour} {shape}" for colour, shape in demo_classes()]


def render_demo_image(
    label: int, split: str, index: int, seed: int = 0, style: RenderStyle = DEMO_STYLE,
    size: int = DEMO_IMAGE_SIZE,
) -> Image.Image:
    """The ``index``-th image of class ``label`` in ``split``: a pure function of its arguments."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    colour, shape = demo_classes()[label]
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], label, index])
    scene = sample_scene(rng, shape=shape, colour=colour, pattern_p=0.0, outline_p=1.0)
    return render_scene(scene, style, rng, size)


def iter_demo_split(
    split: str, per_class: int, seed: int = 0, style: RenderStyle = DEMO_STYLE, size: int = DEMO_IMAGE_SIZE
) -> Iterator[tuple[Image.Image, int]]:
    """``(image, label)`` of a split in memory, in the order of the split file (class by class)."""
    for label in range(len(demo_classes())):
        for index in range(per_class):
            yield render_demo_image(label, split, index, seed, style, size), label


def _manifest(seed: int, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "seed": seed,
        "per_class": counts,
        "image_size": DEMO_IMAGE_SIZE,
        "classnames": demo_classnames(),
        "style": dataclasses.asdict(DEMO_STYLE),
    }


def _is_complete(dataset_dir: Path, manifest: dict[str, Any]) -> bool:
    """True when ``dataset_dir`` holds exactly this manifest, its split file and every image it lists."""
    try:
        found = json.loads((dataset_dir / MANIFEST_FILE).read_text())
        split = json.loads((dataset_dir / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return False
    if found != json.loads(json.dumps(manifest)):
        return False
    if any(len(split.get(s, [])) != manifest["per_class"][s] * len(manifest["classnames"]) for s in SPLITS):
        return False
    images = dataset_dir / IMAGE_FOLDER
    return all((images / item[0]).is_file() for s in SPLITS for item in split[s])


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build(dataset_dir: Path, seed: int, counts: dict[str, int]) -> None:
    """Render every image and write the split file and the manifest into ``dataset_dir`` (a new folder)."""
    names = demo_classnames()
    split: dict[str, list[list[Any]]] = {s: [] for s in SPLITS}
    for label, name in enumerate(names):
        folder = name.replace(" ", "_")
        (dataset_dir / IMAGE_FOLDER / folder).mkdir(parents=True, exist_ok=True)
        for s in SPLITS:
            for index in range(counts[s]):
                rel = f"{folder}/{s}_{index:04d}.png"
                render_demo_image(label, s, index, seed).save(dataset_dir / IMAGE_FOLDER / rel, format="PNG")
                split[s].append([rel, label, name])
    _write_json(dataset_dir / SPLIT_FILE, split)
    _write_json(dataset_dir / MANIFEST_FILE, _manifest(seed, counts))


def generate_demo_dataset(
    root: str | os.PathLike[str],
    seed: int = 0,
    per_class_train: int = 16,
    per_class_val: int = 4,
    per_class_test: int = 20,
) -> Path:
    """Write the demo dataset under ``root`` and return its folder (``root/mmprompt_demo``).

    Idempotent: when the folder already holds a complete dataset made with the same arguments, nothing
    is written. Otherwise the dataset is built in a temporary folder next to it and swapped into place,
    so a reader never sees a half-written dataset.
    """
    counts = {"train": per_class_train, "val": per_class_val, "test": per_class_test}
    if any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"image counts per class must be non-negative ints, got {counts}")
    root = Path(root)
    dataset_dir = root / DATASET_FOLDER
    manifest = _manifest(seed, counts)
    if _is_complete(dataset_dir, manifest):
        logger.info("demo dataset already complete at %s", dataset_dir)
        return dataset_dir
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET_FOLDER}.", suffix=".tmp", dir=root))
    try:
        _build(tmp, seed, counts)
        if _is_complete(dataset_dir, manifest):  # another process finished first
            return dataset_dir
        old = None
        if dataset_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{DATASET_FOLDER}.", suffix=".old", dir=root))
            os.replace(dataset_dir, old / DATASET_FOLDER)
        os.replace(tmp, dataset_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n = sum(counts.values()) * len(demo_classnames())
    logger.info("wrote the demo dataset (%d images, seed %d) to %s", n, seed, dataset_dir)
    return dataset_dir
