"""A frozen teacher for a student learner: a second (possibly larger) CLIP with its own trained prompts.

The engine builds the teacher (``mmprompt train --teacher RUN_DIR_OR_CKPT``: an mmprompt run or prompt
checkpoint, or an official checkpoint) and hands it to a learner whose class declares
``needs_teacher = True`` (see :class:`~mmprompt.methods.base.PromptLearner`). A teacher is itself a prompt
learner (e.g. PromptSRC trained on ViT-L/14), wrapped here so that the student only sees what a teacher
gives: normalised class text features (computed once per class list, never saved), normalised image
features and the teacher's logit scale, all without gradient.

The teacher is not a sub-module of the student: its weights are never part of the student's state dict,
optimizer or checkpoint. :attr:`Teacher.info` (source, method, CLIP, SHA-256) is what the student's run
records instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .base import PromptLearner

__all__ = ["Teacher", "TeacherMismatchError"]


class TeacherMismatchError(ValueError):
    """The teacher does not fit the student (class list, feature width...); the message names both."""


class Teacher:
    """A frozen prompt learner used as a teacher (eval mode, no gradients)."""

    def __init__(self, learner: PromptLearner, info: Mapping[str, Any] | None = None, cache_text: bool = True) -> None:
        self.learner = learner.eval()
        self.cache_text = cache_text
        """False: re-encode the class text at every call (what official code such as PromptKD's does per batch;
        ``mmprompt speed`` measures it as the reference path)."""
        self.learner.requires_grad_(False)
        self.info: dict[str, Any] = dict(info or {})
        """Identity of the teacher: ``source`` (path), ``method``, ``clip`` (weights name), ``sha256``."""
        self._text: dict[tuple[Any, ...], Tensor] = {}
        self._trained_classes = list(learner.classnames)

    # ----- identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A short description for messages: method and source."""
        return f"{self.learner.method} teacher {self.info.get('source') or '(in memory)'}"

    @property
    def embed_dim(self) -> int:
        """Width of the teacher's joint embedding (its text and image features)."""
        return int(self.learner.clip.config.embed_dim)

    @property
    def device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Teacher:
        """Move the teacher (its CLIP and prompts) to the student's device and dtype."""
        if dtype is None:
            self.learner.to(device=device)
        else:
            self.learner.to(device=device, dtype=dtype)
        self._text.clear()
        return self

    # ----- what a student reads ---------------------------------------------------------------------
    @torch.no_grad()
    def text_features(self, classnames: Sequence[str], student: str = "the student") -> Tensor:
        """L2-normalised prompted class text features [C, E_t] of ``classnames``, in float32; computed once
        per class list and cached (never saved). A teacher whose prompts are tied to its own training
        classes (class-specific prompts) refuses other names, naming both lists."""
        names = [str(c) for c in classnames]
        key = (tuple(names), self.device)
        cached = self._text.get(key)
        if cached is not None and (torch.is_inference_mode_enabled() or not cached.is_inference()):
            return cached
        self.check_classes(names, student)
        learner = self.learner
        if list(learner.classnames) != names:
            learner.set_classnames(names)
        with torch.autocast(self.device.type, enabled=False):
            feats = F.normalize(learner.text_features().float(), dim=-1)
        if self.cache_text:
            self._text[key] = feats
        return feats

    def check_classes(self, classnames: Sequence[str], student: str = "the student") -> None:
        """Raise :class:`TeacherMismatchError` when the teacher cannot give features for ``classnames``: its
        prompts are tied to other training classes (class-specific prompts). The message names both lists."""
        learner, names = self.learner, [str(c) for c in classnames]
        trained = list(getattr(self, "_trained_classes", learner.classnames))
        if learner.class_specific and trained != names:
            raise TeacherMismatchError(
                f"the {self.name} has class-specific prompts for its {len(trained)} training classes "
                f"{_short(trained)}, but {student} needs the classes {_short(names)}; train the teacher on the "
                "student's classes or use a teacher with class-agnostic prompts")

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalised prompted image features [B, E_t] of ``images``."""
        dtype = next(self.learner.clip.parameters()).dtype
        return F.normalize(self.learner.image_features(images.to(self.device, dtype)).float(), dim=-1)

    def logit_scale(self) -> Tensor:
        """exp of the teacher CLIP's (frozen) logit scale."""
        return self.learner.logit_scale().detach()


def _short(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
