"""Shared helpers for the engine, protocol, CLI and DDP tests (no tests here).

A tiny random CLIP saved as an OpenAI-layout state dict (loaded with ``activation="quick_gelu"``), and
fake datasets in the official layouts from ``fake_datasets``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from fake_datasets import make_fake_dataset
from mmprompt.clip import CLIP, get_config
from mmprompt.config import RunConfig, load_config
from mmprompt.engine.distributed import DistContext, init_distributed

# Small but real: 4 classes x 8 images (4 train / 1 val / 3 test per class with the fake split).
N_CLASSES = 4
PER_CLASS = 8
FAST = ["optim.epochs=3", "method.depth=2", "data.num_workers=0", "log.progress=false", "log.every=1",
        "data.shots=2", "device=cpu"]


def one_thread():
    """Generator for a module fixture: one intra-op thread. The test machines share 2 cores between many
    processes, where OpenMP's spinning threads make tiny models 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A free local TCP port for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_process_group(rank: int, world: int, port: int, cache: str) -> DistContext:
    """In a spawned worker: the torchrun environment of ``rank`` of ``world`` on CPU (gloo), one thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MMPROMPT_CACHE=cache)
    torch.set_num_threads(1)
    return init_distributed("cpu")


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A random tiny CLIP's state dict (OpenAI key layout) at ``path``, with the ``open_clip_config.json``
    that states its heads, activation, pooling (a bare state dict does not say them)."""
    torch.manual_seed(seed)
    config = get_config("tiny")
    torch.save(CLIP(config).state_dict(), path)
    v, t = config.vision, config.text
    model_cfg = {
        "embed_dim": config.embed_dim, "quick_gelu": True,
        "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                       "head_width": v.width // v.heads, "patch_size": v.patch_size},
        "text_cfg": {"context_length": t.context_length, "width": t.width, "heads": t.heads, "layers": t.layers},
    }
    (path.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return path


def make_data_root(root: Path, datasets: tuple[str, ...] = ("eurosat",)) -> Path:
    for name in datasets:
        make_fake_dataset(name, root, n_classes=N_CLASSES, per_class=PER_CLASS)
    return root


def fast_config(root: Path, clip_path: Path, preset: str = "maple_b2n", extra: list[str] | None = None,
                dataset: str = "eurosat") -> RunConfig:
    """A preset shrunk for tests: 3 epochs, depth 2, 2 shots, no workers, no progress bar."""
    overrides = [*FAST, f"data.root={root}", f"clip.weights={clip_path}", "clip.activation=quick_gelu"]
    if preset not in ("maple_b2n", "maple_xd"):
        overrides = [o for o in overrides if not o.startswith("method.depth")]
    return load_config(preset, [*overrides, *(extra or [])], dataset=dataset)


def prompts_of(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def assert_same_prompts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max abs diff {(a[k] - b[k]).abs().max().item():.3e})"


def official_custom_clip_state(ref: Any, case: str, logit_scale: float = 4.6,
                               suffix_length: int = 60) -> dict[str, torch.Tensor]:
    """The state dict an official (Dassl) ``CustomCLIP`` saves for a reference case: the case's trained
    parameters, the frozen CLIP as ``image_encoder.*`` / ``text_encoder.*``, the logit scale and the
    class-dependent prompt buffers (which import-official must drop)."""
    import numpy as np

    state = {k.split("/", 2)[2]: torch.from_numpy(v) for k, v in ref.arrays.items() if k.startswith(f"{case}/param/")}
    for key, value in ref.arrays.items():
        if key.startswith("weights/visual."):
            state["image_encoder." + key[len("weights/visual."):]] = torch.from_numpy(value.astype(np.float32))
        elif key.startswith("weights/transformer."):
            state["text_encoder." + key[len("weights/"):]] = torch.from_numpy(value.astype(np.float32))
    state["logit_scale"] = torch.tensor(logit_scale)
    state["prompt_learner.token_prefix"] = torch.zeros(5, 1, 64)
    state["prompt_learner.token_suffix"] = torch.zeros(5, suffix_length, 64)
    return state


def official_teacher_for(method: str, clip, options: dict):
    """For a distilling method: its official teacher design built on ``clip`` itself (the official depths
    capped to the CLIP's layers), frozen and wrapped as a Teacher; None for a method without a teacher."""
    from mmprompt.methods import Teacher, create_learner, get_method, make_config

    spec = get_method(method)
    if not spec.learner.needs_teacher:
        return None
    teacher_method, teacher_options = spec.learner.official_teacher(make_config(method, options))
    layers = min(clip.config.text.layers, clip.config.vision.layers)
    teacher_options = {k: min(v, layers - 1) if k.startswith("depth") else v for k, v in teacher_options.items()}
    return Teacher(create_learner(teacher_method, clip, ["cat"], teacher_options))


def tiny_clip_f64() -> CLIP:
    """The tiny CLIP (4 layers per tower) in float64, frozen: comparisons see the algorithm, not rounding."""
    torch.manual_seed(0)
    return CLIP(get_config("tiny")).double().eval().requires_grad_(False)


def tiny_batch_f64() -> tuple[torch.Tensor, torch.Tensor]:
    """Three float64 32-px images and their labels (0, 3, 4), the same on every call."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64), torch.tensor([0, 3, 4])
