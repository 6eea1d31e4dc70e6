"""Prompt learners and the method table.

Built-in methods: zero-shot CLIP, CoOp, CoCoOp, VPT-deep, deep language prompting, IVLP and MaPLe,
and the successors that followed them. Each method is one module (its learner and config) and one row
of the table (:mod:`mmprompt.methods.table`); use :func:`list_methods`, :func:`make_config` and
:func:`create_learner`. Methods of other packages join through the ``mmprompt.methods`` entry points
or :func:`register`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from ..clip.model import CLIP
from .base import MethodConfig, PromptLearner, is_trainable
from .contract import DatasetContext, EncoderOptions, NoLabels, Objective, cross_entropy_objective
from .learner import ParameterGroup, legacy_name
from .table import (
    ENTRY_POINT_GROUP,
    PROTOCOLS,
    MethodSpec,
    all_methods,
    canonical_method,
    config_from_official,
    get_method,
    list_methods,
    make_config,
    method_variant,
    official_to_ours,
    register,
    reload_plugins,
    unregister,
)
from .teacher import Teacher, TeacherMismatchError
from .wrapper import LearnerWrapper


def create_learner(
    method: str,
    clip: CLIP,
    classnames: Sequence[str],
    config: MethodConfig | Mapping[str, Any] | None = None,
    *,
    dataset: DatasetContext | None = None,
    encoder: EncoderOptions | None = None,
    teacher: Teacher | None = None,
) -> PromptLearner:
    """Build the prompt learner ``method`` on a (frozen) CLIP for ``classnames`` of ``dataset`` (with its
    frozen ``teacher`` when the method declares ``needs_teacher``; ignored otherwise)."""
    spec = get_method(method)
    if config is None or isinstance(config, Mapping):
        config = make_config(method, config)
    if not isinstance(config, spec.config):
        raise TypeError(f"{method} needs a {spec.config.__name__}, got {type(config).__name__}")
    if spec.learner.needs_teacher:
        return spec.learner(clip, classnames, config, dataset=dataset, encoder=encoder, teacher=teacher)
    return spec.learner(clip, classnames, config, dataset=dataset, encoder=encoder)


def convert_official_state_dict(method: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep the trained tensors of an official state dict, renamed; frozen CLIP and buffers are dropped."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        ours = official_to_ours(method, name.removeprefix("module."))
        if ours is not None:
            out[ours] = value
    return out


__all__ = [
    "ENTRY_POINT_GROUP",
    "PROTOCOLS",
    "DatasetContext",
    "EncoderOptions",
    "LearnerWrapper",
    "MethodConfig",
    "MethodSpec",
    "NoLabels",
    "Objective",
    "ParameterGroup",
    "PromptLearner",
    "Teacher",
    "TeacherMismatchError",
    "all_methods",
    "canonical_method",
    "method_variant",
    "config_from_official",
    "convert_official_state_dict",
    "create_learner",
    "cross_entropy_objective",
    "get_method",
    "is_trainable",
    "legacy_name",
    "list_methods",
    "make_config",
    "official_to_ours",
    "register",
    "reload_plugins",
    "unregister",
]
