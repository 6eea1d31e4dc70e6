"""PromptKD: unsupervised prompt distillation (Li et al., CVPR 2024; official code zhengli97/PromptKD @ ec244f7).

A large frozen teacher (PromptSRC's IVLP model on ViT-L/14 in the paper) gives the class text features
and soft labels; the student is a smaller CLIP's image tower with deep vision prompts (VPT/IVLP style)
plus a projector to the teacher's embedding width. It has no text branch: its classifier is the
teacher's prompted text features of the classes, fixed. Training is transductive and label-free:

``loss = kd_weight * kd``, ``kd = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` summed over the batch
and the classes and divided by their product B * n_cls (``kd_sum`` is the raw sum, weight 0), where

* ``z_t = exp(teacher logit_scale) * img_t @ txt^T`` (the teacher on the same augmented images, no grad);
* ``z_s = exp(STUDENT logit_scale) * normalize(projector(f)) @ txt^T`` with ``f`` the student's prompted,
  UNnormalised image feature and ``txt`` the teacher's normalised text features of all classes.

The projector is the official ``VPT_image_trans``: 1x1 conv E_s -> E_t, BatchNorm, ReLU, 1x1 conv E_t ->
E_t (widths taken from the two CLIPs; the official code hard-codes 512 -> 768). Its BatchNorm uses batch
statistics in training and running statistics at evaluation; the running statistics are saved with the
prompts.

Differences from the official code, on purpose: the teacher is any frozen mmprompt prompt learner
(normally PromptSRC with the 4 + 4 tokens, depth 9/9 design the official code hard-codes), loaded strictly
(the official non-strict load keeps random prompts silently when one is missing); its text features are
computed once per class list, not on every batch (same values); base/novel evaluation encodes each half's
classes instead of slicing the all-class features (each class's features do not depend on the others).
The official recipe keeps the epoch with the best accuracy on the base classes' TEST images
(``TEST.FINAL_MODEL best_val``) and reports novel accuracy with it; mmprompt reports the final epoch (no
selection on test data). The official runs are fp16 end to end (spec section 9.8); the presets run fp32 (any
``precision`` works). With several processes (DDP) the BatchNorm statistics are those of each process's share of the batch (the
official code runs on one GPU), so a multi-process run differs slightly from a one-process run of the same global
batch. The cross-dataset protocol (``mmprompt benchmark cross-dataset`` / ``reproduce``) trains this student on each
target's unlabelled training split with the source's (ImageNet) teacher, as the official ``xd_train.sh`` does
(:mod:`mmprompt.protocols.transfer`). ``modal`` only decides which columns :meth:`PromptKD.eval_tensors` reports as the official ``test()``
``val``/``test`` outputs; in mmprompt runs the protocol makes the base and novel class lists.

Composition (:class:`~mmprompt.methods.wrapper.LearnerWrapper`): the official student is the IVLP CLIP's image
tower with its VPT prompts (``image_encoder.VPT`` / ``VPT_shallow``) plus a projector; the student CLIP's text
tower is built and never used. Here the prompted image tower IS a learner of the method table, ``ivlp`` with
the text tower off (``n_ctx_text = depth_text = 0``; its vision prompts are n_v tokens over J_v blocks, none when
either is 0), held at ``trainable.image_encoder`` (tensors ``trainable.image_encoder.trainable.vision_ctx`` /
``vision_deep.{i}``); the projector is the wrapper's own module (``trainable.projector``). PromptKD overrides
the features, logits, objective and evaluation tensors (the classifier is the teacher's text, never the inner
learner's), and keeps ONE parameter group (the official optimizer's: same rate for prompts and projector).
Checkpoints written before the composition (``trainable.vision_ctx``, ``trainable.vision_deep.{i}``) load
through :meth:`PromptKD.current_names`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_number
from ..clip.model import CLIP
from .base import MethodConfig, check_depth
from .contract import Objective
from .learner import TRAINABLE_PREFIX, ParameterGroup
from .teacher import Teacher, TeacherMismatchError
from .wrapper import LearnerWrapper

MODALS = ("base2novel", "cross")


@dataclasses.dataclass
class PromptKDConfig(MethodConfig):
    n_ctx_vision: int = 4
    """Student vision prompt tokens per layer (official N_CTX_VISION)."""
    depth_vision: int = 9
    """Student vision blocks (from the first) with prompts; 0: no vision prompt (PROMPT_DEPTH_VISION)."""
    n_ctx_text: int = 4
    """Length of the teacher's text context (N_CTX_TEXT): must equal the teacher's prompts."""
    ctx_init: str = "a photo of a"
    """The teacher's prompt prefix for an official teacher checkpoint (CTX_INIT)."""
    depth_text: int = 9
    """PROMPT_DEPTH_TEXT: shapes only the student's unused text tower in the official code; must be >= 1."""
    kd_weight: float = 1000.0
    """Weight of ``kd`` (KD_WEIGHT; the official yaml says 1.0, every official script passes 1000)."""
    temperature: float = 1.0
    """Distillation temperature T (TEMPERATURE)."""
    modal: str = "base2novel"
    """TRAINER.MODAL: ``base2novel`` (official test(): val = first ceil(C/2) classes, test = the rest) or
    ``cross`` (all classes)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("promptkd.n_ctx_vision", self.n_ctx_vision, minimum=0)
        check_int("promptkd.depth_vision", self.depth_vision, minimum=0)
        check_int("promptkd.n_ctx_text", self.n_ctx_text, minimum=1)
        check_int("promptkd.depth_text", self.depth_text, minimum=1)
        self.kd_weight = check_number("promptkd.kd_weight", self.kd_weight, minimum=0)
        self.temperature = check_number("promptkd.temperature", self.temperature, above=0)
        if self.modal not in MODALS:
            raise ValueError(f"promptkd.modal must be one of {MODALS}, got {self.modal!r}")
        if not isinstance(self.ctx_init, str):
            raise ValueError(f"promptkd.ctx_init must be a string, got {self.ctx_init!r}")

    def check_model(self, clip: CLIP) -> None:
        if self.n_ctx_vision and self.depth_vision:
            check_depth("depth_vision", self.depth_vision, clip.config.vision.layers)

    @property
    def vision_prompts(self) -> bool:
        return bool(self.n_ctx_vision and self.depth_vision)

    def encoder_options(self) -> dict[str, Any]:
        """The inner ``ivlp`` learner's options: the student's vision prompts, the text tower off."""
        n, depth = (self.n_ctx_vision, self.depth_vision) if self.vision_prompts else (0, 0)
        return {"n_ctx_text": 0, "depth_text": 0, "n_ctx_vision": n, "depth_vision": depth}


_OFFICIAL_KEYS = {"N_CTX_VISION": "n_ctx_vision", "PROMPT_DEPTH_VISION": "depth_vision", "N_CTX_TEXT": "n_ctx_text",
                  "CTX_INIT": "ctx_init", "PROMPT_DEPTH_TEXT": "depth_text", "KD_WEIGHT": "kd_weight",
                  "TEMPERATURE": "temperature"}
_OFFICIAL_UNUSED = ("PREC", "TEACHER_NAME", "PROJECT_LAYER", "CE_WEIGHT")
"""Precision is a run option; the teacher's CLIP comes with the teacher; the last two are never read."""


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config for the official ``TRAINER.PROMPTKD`` keys (flat, or nested under that key beside
    ``TRAINER.MODAL``)."""
    keys = dict(official.get("TRAINER.PROMPTKD", official))
    unknown = sorted(set(keys) - set(_OFFICIAL_KEYS) - set(_OFFICIAL_UNUSED) - {"MODAL"})
    if unknown:
        raise ValueError(f"official PromptKD option(s) {unknown} are not understood; known: "
                         f"{sorted([*_OFFICIAL_KEYS, *_OFFICIAL_UNUSED])}")
    values = {ours: keys[key] for key, ours in _OFFICIAL_KEYS.items() if key in keys}
    modal = official.get("TRAINER.MODAL", keys.get("MODAL"))
    if modal is not None:
        values["modal"] = str(modal)
    if "ctx_init" in values:
        values["ctx_init"] = str(values["ctx_init"] or "")
    return values


ENCODER_SLOT = "image_encoder"
"""Where the inner prompted image tower sits: ``trainable.image_encoder`` (the official module's name)."""
_ENCODER = f"{TRAINABLE_PREFIX}{ENCODER_SLOT}.{TRAINABLE_PREFIX}"
_FORMER = re.compile(r"^(?:trainable|prompt)\.(vision_ctx|vision_deep\.\d+)$")
"""The prompt names before the composition (and under the older container name ``prompt``)."""


def moved_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the student's prompts written before the composition (``trainable.vision_ctx``,
    ``trainable.vision_deep.{i}``) renamed to the inner learner's (``trainable.image_encoder.trainable.*``)."""
    return {(_ENCODER + m[1] if (m := _FORMER.match(k)) else k): v for k, v in state.items()}


OFFICIAL_NAMES = {
    r"image_encoder\.VPT": _ENCODER + "vision_ctx",
    r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow":
        lambda m: f"{_ENCODER}vision_deep.{int(m[1]) - 1}",
    r"VPT_image_trans\.conv1\.(\d)\.(weight|bias|running_mean|running_var|num_batches_tracked)":
        r"trainable.projector.\1.\2",
}
"""Official student names -> ours (the projector's BatchNorm buffers too: they are needed at evaluation)."""


class PromptKD(LearnerWrapper):
    """The PromptKD student: a prompted image tower (an inner ``ivlp`` learner, vision prompts only) + the
    projector, classified by the teacher's text features."""

    method = "promptkd"
    needs_teacher = True
    transductive = True
    inner_slot = ENCODER_SLOT
    config: PromptKDConfig
    teacher: Teacher

    @classmethod
    def official_teacher(cls, config: PromptKDConfig) -> tuple[str, dict[str, Any]]:  # type: ignore[override]
        """PromptSRC's IVLP model with the design the official code hard-codes (4 + 4 tokens, depth 9/9), the
        text context sized by N_CTX_TEXT and started from CTX_INIT."""
        return "promptsrc", {"n_ctx_text": config.n_ctx_text, "n_ctx_vision": 4, "depth_text": 9,
                             "depth_vision": 9, "ctx_init": config.ctx_init}

    def check_teacher(self, teacher: Teacher) -> None:
        learner = teacher.learner
        if learner.image_conditioned_text:
            raise TeacherMismatchError(
                f"promptkd needs class text features that do not depend on the image, but the {teacher.name} "
                "conditions its text on each image")
        n_ctx = getattr(learner.config, "n_ctx_text", None)
        if n_ctx is not None and n_ctx != self.config.n_ctx_text:
            raise TeacherMismatchError(
                f"the {teacher.name} has {n_ctx} text context tokens, but the promptkd student's n_ctx_text "
                f"(N_CTX_TEXT) is {self.config.n_ctx_text}; set method.n_ctx_text={n_ctx}")
        ours, theirs = self.clip.config.vision.image_size, learner.clip.config.vision.image_size
        if ours != theirs:
            raise TeacherMismatchError(
                f"the {teacher.name} reads {theirs}px images but the promptkd student's CLIP reads {ours}px; "
                "both see the same augmented images, so their input resolutions must be equal")

    # ----- composition: the inner prompted image tower and the projector ---------------------------------
    def inner_method(self) -> tuple[str, MethodConfig]:
        from .table import make_config  # lazy: the table imports this module

        return "ivlp", make_config("ivlp", self.config.encoder_options())

    def build_wrapper(self) -> None:
        e_s, e_t = self.clip.config.embed_dim, self.teacher.embed_dim
        self.trainable.projector = nn.Sequential(
            nn.Conv2d(e_s, e_t, kernel_size=1), nn.BatchNorm2d(e_t), nn.ReLU(inplace=True),
            nn.Conv2d(e_t, e_t, kernel_size=1))

    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        from .ivlp import IVLP

        found = IVLP.options_from_state(cls.inner_state(moved_names(state)))
        return {"n_ctx_vision": found["n_ctx_vision"], "depth_vision": found["depth_vision"]}

    def current_names(self, state: Mapping[str, Any], own: Sequence[str] | None = None) -> dict[str, Any]:
        """Also the names written before the composition (``trainable.vision_ctx`` ...; see :func:`moved_names`)."""
        return super().current_names(moved_names(state), own)

    def parameter_groups(self) -> list[ParameterGroup]:
        """One group, prompts then projector (the official optimizer: one rate for every ``VPT`` parameter)."""
        return [(self.trainable_parameters(), 1.0)]

    def prepare_classes(self, classnames: list[str]) -> None:
        """Nothing class-dependent of its own: the classifier is the teacher's (computed lazily); only check
        that the teacher can give these classes (the inner learner follows the class list; its text is unused)."""
        self.teacher.check_classes(self.classnames, student="the promptkd student")
        super().prepare_classes(classnames)

    # ----- the student -------------------------------------------------------------------------------
    def encoder_features(self, images: Tensor) -> Tensor:
        """The student image tower's prompted output f [B, E_s] (not normalised): the inner learner's."""
        return self.inner.image_features(images)

    def project(self, features: Tensor) -> Tensor:
        """The projector on [B, E_s] features: [B, E_t] (BatchNorm per the module's train/eval mode)."""
        proj = self.trainable.projector
        x = features.to(proj[0].weight.dtype)[:, :, None, None]
        return proj(x)[:, :, 0, 0]

    def image_features(self, images: Tensor) -> Tensor:
        """The student's feature in the teacher's space: projector(f), [B, E_t], not normalised."""
        return self.project(self.encoder_features(images))

    def text_features(self) -> Tensor:
        """The teacher's normalised prompted text features [C, E_t] of the current classes (fixed)."""
        feats = self.teacher.text_features(self.classnames, student="the promptkd student")
        return feats.to(self.clip.logit_scale.device)

    def logit_scale(self) -> Tensor:
        """The STUDENT CLIP's (frozen) scale (the teacher's scales only the teacher's logits)."""
        return self.clip.logit_scale.exp().float()

    def logits(self, images: Tensor) -> Tensor:
        return self.logits_from(self.image_features(images), self.text_features())

    def train_logits(self, images: Tensor) -> Tensor:
        return self.logits(images)

    @torch.no_grad()
    def class_text_features(self) -> Tensor | None:
        return self.text_features()

    def predict_logits(self, images: Tensor, text_features: Tensor | None) -> Tensor:
        text = self.text_features() if text_features is None else text_features
        return self.logits_from(self.image_features(images), text)

    # ----- training ----------------------------------------------------------------------------------
    def objective(self, images: Tensor, labels: Any) -> Objective:
        """KD of the teacher's class distribution into the student's; ``labels`` are never read."""
        cfg = self.config
        text = self.text_features()
        f = self.encoder_features(images)
        projected = self.project(f)
        student = F.normalize(projected.float(), dim=-1)
        logits = self.logit_scale() * student @ text.t()
        with torch.no_grad():
            teacher_image = self.teacher.image_features(images).to(text.device)
            teacher_logits = self.teacher.logit_scale().to(text.device).float() * teacher_image @ text.t()
        t = cfg.temperature
        kd_sum = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="sum")
        kd = kd_sum * (t * t) / logits.numel()
        bn = self.trainable.projector[1]
        tensors = {"teacher/text_features": text, "teacher/image_features": teacher_image,
                   "teacher/logits": teacher_logits, "student/image_features": f, "student/projected": projected,
                   "student/image_features_normalized": student, "student/logits": logits}
        if bn.running_mean is not None:
            tensors.update({"bn/running_mean_after": bn.running_mean.detach().clone(),
                            "bn/running_var_after": bn.running_var.detach().clone()})
        return Objective(total=cfg.kd_weight * kd, terms={"kd": kd, "kd_sum": kd_sum.detach()}, logits=logits,
                         tensors=tensors)

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """The official ``test()`` outputs: the projector's output and the logits of split ``val`` (base
        half in ``base2novel``, all classes in ``cross``) and ``test`` (novel half / all)."""
        projected = self.image_features(images)
        logits = self.logits_from(projected, self.text_features())
        if self.config.modal == "cross":
            val, test = logits, logits
        else:
            n_base = math.ceil(logits.shape[1] / 2)
            val, test = logits[:, :n_base], logits[:, n_base:]
        return {"eval/projected": projected, "eval/val_logits": val, "eval/test_logits": test}
