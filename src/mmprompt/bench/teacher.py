"""The teacher of a distilling method under ``mmprompt speed``: random weights of the teacher's shape."""

from __future__ import annotations

from typing import Any

import torch

from ..clip.config import get_config
from ..clip.model import build_model
from ..methods import Teacher, create_learner, get_method
from ..methods.contract import EncoderOptions

__all__ = ["bench_teacher", "teacher_arch"]


def teacher_arch(settings: Any) -> str:
    """The teacher's architecture: ``settings.teacher_arch``, else ViT-L/14 for a ViT-B student (PromptKD's
    official pair), else the student's own."""
    if settings.teacher_arch:
        return str(settings.teacher_arch)
    return "ViT-L/14" if str(settings.arch).startswith("ViT-B/") else str(settings.arch)


def bench_teacher(settings: Any, path: str, config: Any, encoder: EncoderOptions, names: list[str],
                  device: torch.device) -> Teacher | None:
    """A frozen teacher for ``settings.method`` when it needs one (None otherwise): the method's official teacher
    design on a random CLIP of :func:`teacher_arch`, its depths cut to that CLIP's layers. On the ``reference``
    path its text encoder runs the official way and its class text is re-encoded at every call."""
    learner_cls = get_method(settings.method).learner
    if not learner_cls.needs_teacher:
        return None
    method, options = learner_cls.official_teacher(config)
    torch.manual_seed(settings.seed + 100)
    clip = build_model(get_config(teacher_arch(settings))).to(device).eval().requires_grad_(False)
    layers = {"depth_text": clip.config.text.layers, "depth_vision": clip.config.vision.layers}
    options = {k: min(v, layers[k] - 1) if k in layers and v > layers[k] - 1 else v for k, v in options.items()}
    learner = create_learner(method, clip, names, options, encoder=encoder).to(device)
    return Teacher(learner, {"source": f"random {teacher_arch(settings)}"}, cache_text=path == "default")
