"""The offline demo world: the generated benchmark, the shipped demo CLIP, and that both make sense.

The accuracy tests use sensible thresholds (multiples of chance, "better than zero-shot"), not numbers
copied from a run.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmprompt.clip.config import CLIPConfig
from mmprompt.clip.transforms import EvalTransform
from mmprompt.demo import (
    DEMO_IMAGE_SIZE,
    DEMO_TEMPLATE,
    DemoWeightsError,
    demo_classnames,
    demo_clip_info,
    generate_demo_dataset,
    load_demo_clip,
)
from mmprompt.demo import weights as demo_weights
from mmprompt.demo.render import DEMO_STYLE, PRETRAIN_STYLE, SHAPES, render_scene, sample_scene, shape_mask
from mmprompt.demo.world import DEMO_COLOURS, DEMO_SHAPES, SPLIT_FILE, demo_classes
from mmprompt.methods import create_learner

N_CLASSES = 25
N_BASE = math.ceil(N_CLASSES / 2)


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset with its default sizes (16 train / 4 val / 20 test per class)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo_root"), seed=0)


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_demo_clip()


def load_split(dataset_dir: Path, split: str, labels: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-transformed images [N, 3, H, W] and labels (relabelled from ``labels.start``) of a split."""
    items = json.loads((dataset_dir / SPLIT_FILE).read_text())[split]
    transform = EvalTransform(DEMO_IMAGE_SIZE)
    kept = [(path, label) for path, label, _ in items if label in labels]
    images = torch.stack([transform(Image.open(dataset_dir / "images" / path)) for path, _ in kept])
    return images, torch.tensor([label - labels.start for _, label in kept])


@torch.no_grad()
def accuracy(learner: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    learner.eval()
    return float((learner(images).argmax(dim=-1) == labels).float().mean())


def zero_shot(clip: torch.nn.Module, labels: range) -> torch.nn.Module:
    names = demo_classnames()[labels.start : labels.stop]
    return create_learner("zeroshot", clip, names, {"templates": [DEMO_TEMPLATE]})


# ------------------------------------------------------------------------------------------------ the world
def test_classes_and_base_novel_halves() -> None:
    names = demo_classnames()
    assert len(names) == N_CLASSES == len(set(names))
    base, novel = demo_classes()[:N_BASE], demo_classes()[N_BASE:]
    for half in (base, novel):  # every colour and shape in both halves, no combination in both
        assert {c for c, _ in half} == set(DEMO_COLOURS)
        assert {s for _, s in half} == set(DEMO_SHAPES)
    assert not set(base) & set(novel)
    assert DEMO_TEMPLATE.format(names[0]) == f"a photo of a {names[0]}."


def test_generate_layout_split_and_idempotence(tmp_path: Path) -> None:
    counts = {"train": 3, "val": 1, "test": 2}
    out = generate_demo_dataset(tmp_path, seed=1, per_class_train=3, per_class_val=1, per_class_test=2)
    assert out == tmp_path / "mmprompt_demo"
    split = json.loads((out / SPLIT_FILE).read_text())
    assert set(split) == {"train", "val", "test"}
    for name, n in counts.items():
        assert len(split[name]) == n * N_CLASSES
        assert sorted({label for _, label, _ in split[name]}) == list(range(N_CLASSES))
        for path, label, classname in split[name]:
            assert classname == demo_classnames()[label]
            assert path.split("/")[0] == classname.replace(" ", "_")
            image = Image.open(out / "images" / path)
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE)
    all_paths = [p for name in counts for p, _, _ in split[name]]
    assert len(set(all_paths)) == len(all_paths)
    assert len(list((out / "images").rglob("*.png"))) == len(all_paths)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left

    # Idempotent: a second call with the same arguments writes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate_demo_dataset(tmp_path, seed=1, per_class_train=3, per_class_val=1, per_class_test=2) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps

    # Other arguments: regenerated; the first images of each class are unchanged (pure function of index).
    first = (out / "images" / split["test"][0][0]).read_bytes()
    generate_demo_dataset(tmp_path, seed=1, per_class_train=3, per_class_val=1, per_class_test=4)
    split4 = json.loads((out / SPLIT_FILE).read_text())
    assert len(split4["test"]) == 4 * N_CLASSES
    assert (out / "images" / split4["test"][0][0]).read_bytes() == first

    # A damaged dataset (missing image) is rebuilt.
    victim = out / "images" / split4["train"][5][0]
    victim.unlink()
    generate_demo_dataset(tmp_path, seed=1, per_class_train=3, per_class_val=1, per_class_test=4)
    assert victim.is_file()


def test_generation_is_seeded(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", seed=0, per_class_train=1, per_class_val=0, per_class_test=1)
    b = generate_demo_dataset(tmp_path / "b", seed=0, per_class_train=1, per_class_val=0, per_class_test=1)
    c = generate_demo_dataset(tmp_path / "c", seed=5, per_class_train=1, per_class_val=0, per_class_test=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert sum((a / f).read_bytes() != (c / f).read_bytes() for f in files) > len(files) // 2
    with pytest.raises(ValueError):
        generate_demo_dataset(tmp_path / "d", per_class_train=-1)


def test_styles_differ_and_renderer_is_seeded() -> None:
    scene = sample_scene(np.random.default_rng(0), shape="star", colour="red")
    one = np.asarray(render_scene(scene, PRETRAIN_STYLE, np.random.default_rng(3)))
    two = np.asarray(render_scene(scene, PRETRAIN_STYLE, np.random.default_rng(3)))
    shifted = np.asarray(render_scene(scene, DEMO_STYLE, np.random.default_rng(3)))
    assert one.shape == (32, 32, 3) and np.array_equal(one, two)
    assert np.abs(one.astype(int) - shifted.astype(int)).mean() > 10
    for shape in SHAPES:  # every shape renders something visible, filled and as an outline, in both styles
        for outline_p in (0.0, 1.0):
            s = sample_scene(np.random.default_rng(1), shape=shape, colour="white", outline_p=outline_p)
            assert s.outline == (outline_p == 1.0)
            for style in (PRETRAIN_STYLE, DEMO_STYLE):
                assert np.asarray(render_scene(s, style, np.random.default_rng(2))).std() > 5


def test_outline_mask_is_hollow() -> None:
    filled = np.asarray(shape_mask("square", 128, 64.0, 64.0, 40.0, 0.0))
    hollow = np.asarray(shape_mask("square", 128, 64.0, 64.0, 40.0, 0.0, outline=0.3))
    assert filled[64, 64] == 255 and hollow[64, 64] == 0
    assert 0 < (hollow > 0).sum() < (filled > 0).sum()
    assert not ((hollow > 0) & (filled == 0)).any()


# ------------------------------------------------------------------------------------------------ the weights
def test_shipped_weights_match_their_record() -> None:
    info = demo_clip_info()
    path = demo_weights.demo_weights_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    assert path.stat().st_size <= 20 * 1024 * 1024
    for key in ("config", "command", "seed", "pretraining"):
        assert key in info
    assert info["config"]["text"]["vocab_size"] == 49408


def test_load_demo_clip_is_frozen_and_verified(
    clip: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not clip.training
    assert not any(p.requires_grad for p in clip.parameters())
    assert clip.config == CLIPConfig.from_dict(demo_clip_info()["config"])
    assert clip.logit_scale.dtype == torch.float32

    bad = tmp_path / "demo_clip.safetensors"
    shutil.copyfile(demo_weights.demo_weights_path(), bad)
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(demo_weights, "demo_weights_path", lambda: bad)
    with pytest.raises(DemoWeightsError, match="SHA-256"):
        load_demo_clip()


# ------------------------------------------------------------------------------------------------ it learns
def test_zero_shot_well_above_chance(clip: torch.nn.Module, demo_dir: Path) -> None:
    for labels in (range(N_CLASSES), range(N_BASE), range(N_BASE, N_CLASSES)):
        images, targets = load_split(demo_dir, "test", labels)
        acc = accuracy(zero_shot(clip, labels), images, targets)
        chance = 1 / len(labels)
        assert acc > 3 * chance, f"zero-shot accuracy {acc:.3f} on labels {labels} (chance {chance:.3f})"


def few_shot_train(
    method: str, config: dict, clip: torch.nn.Module, demo_dir: Path, epochs: int, lr: float, seed: int = 1
) -> tuple[float, float]:
    """Train ``method`` on the base classes' 16-shot train split with plain SGD (batch 4); return the
    base test accuracy of zero-shot CLIP and of the trained learner."""
    base = range(N_BASE)
    torch.manual_seed(seed)
    learner = create_learner(method, clip, demo_classnames()[:N_BASE], config)
    train_x, train_y = load_split(demo_dir, "train", base)
    test_x, test_y = load_split(demo_dir, "test", base)
    optimizer = torch.optim.SGD(learner.trainable_parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order = list(range(len(train_y)))
    rng = random.Random(seed)
    for _ in range(epochs):
        learner.train()
        rng.shuffle(order)
        for start in range(0, len(order) - 3, 4):
            idx = order[start : start + 4]
            loss = torch.nn.functional.cross_entropy(learner(train_x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return accuracy(zero_shot(clip, base), test_x, test_y), accuracy(learner, test_x, test_y)


def test_coop_beats_zero_shot_on_base_classes(clip: torch.nn.Module, demo_dir: Path) -> None:
    zs, coop = few_shot_train("coop", {"ctx_init": "a photo of a"}, clip, demo_dir, epochs=5, lr=0.002)
    assert coop > zs + 0.05, f"CoOp {coop:.3f} vs zero-shot {zs:.3f} on base classes"


def test_maple_beats_zero_shot_on_base_classes(clip: torch.nn.Module, demo_dir: Path) -> None:
    zs, maple = few_shot_train("maple", {"n_ctx": 2, "depth": 3}, clip, demo_dir, epochs=5, lr=0.0035)
    assert maple > zs + 0.05, f"MaPLe {maple:.3f} vs zero-shot {zs:.3f} on base classes"
