"""Prompt learners: zero-shot CLIP, CoOp, CoCoOp, VPT-deep, deep language prompting, IVLP and MaPLe.

A plain dict maps method names to their learner class, config class and official parameter names;
use :func:`list_methods`, :func:`make_config` and :func:`create_learner`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..clip.model import CLIP
from . import cocoop, coop, ivlp, language, maple, vpt, zeroshot
from .base import MethodConfig, PromptLearner, is_trainable


@dataclass(frozen=True)
class MethodSpec:
    learner: type[PromptLearner]
    config: type[MethodConfig]
    official_names: Mapping[str, str | Callable[[re.Match[str]], str]]
    """Regex over the official (Dassl) parameter name -> our name (template or function)."""
    official_config: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Official yaml key (TRAINER.<NAME>.<KEY>) -> our config field."""


_DEEP = {"N_CTX_TEXT": "n_ctx_text", "N_CTX_VISION": "n_ctx_vision", "PROMPT_DEPTH_TEXT": "depth_text",
         "PROMPT_DEPTH_VISION": "depth_vision", "CTX_INIT": "ctx_init"}
METHODS: dict[str, MethodSpec] = {
    "zeroshot": MethodSpec(zeroshot.ZeroShotCLIP, zeroshot.ZeroShotConfig, {}),
    "coop": MethodSpec(coop.CoOp, coop.CoOpConfig, coop.OFFICIAL_NAMES, {
        "N_CTX": "n_ctx", "CTX_INIT": "ctx_init", "CSC": "class_specific",
        "CLASS_TOKEN_POSITION": "class_token_position"}),
    "cocoop": MethodSpec(cocoop.CoCoOp, cocoop.CoCoOpConfig, cocoop.OFFICIAL_NAMES,
                         {"N_CTX": "n_ctx", "CTX_INIT": "ctx_init"}),
    "vpt": MethodSpec(vpt.VPT, vpt.VPTConfig, vpt.OFFICIAL_NAMES, _DEEP),
    "language_only": MethodSpec(language.LanguageOnly, language.LanguageOnlyConfig, language.OFFICIAL_NAMES, _DEEP),
    "ivlp": MethodSpec(ivlp.IVLP, ivlp.IVLPConfig, ivlp.OFFICIAL_NAMES, _DEEP),
    "maple": MethodSpec(maple.MaPLe, maple.MaPLeConfig, maple.OFFICIAL_NAMES,
                        {"N_CTX": "n_ctx", "CTX_INIT": "ctx_init", "PROMPT_DEPTH": "depth"}),
}
IGNORED_OFFICIAL_KEYS = ("PREC",)
ALIASES = {"clip": "zeroshot", "zsclip": "zeroshot", "zero_shot": "zeroshot", "vpt_deep": "vpt",
           "language": "language_only", "independent_vl": "ivlp"}


def list_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[key]


def canonical_method(name: str) -> str:
    spec = get_method(name)
    return next(k for k, v in METHODS.items() if v is spec)


def make_config(method: str, values: Mapping[str, Any] | None = None) -> MethodConfig:
    """A validated config for ``method`` from a mapping of field values (unknown fields are an error)."""
    cls = get_method(method).config
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) for method {method!r}: {unknown}; known: {sorted(known)}")
    return cls(**values)


def config_from_official(method: str, official: Mapping[str, Any]) -> MethodConfig:
    """Our config for an official yaml section (``TRAINER.<NAME>``); unknown keys are an error."""
    spec = get_method(method)
    values: dict[str, Any] = {}
    for key, value in official.items():
        if key in IGNORED_OFFICIAL_KEYS:
            continue
        if key not in spec.official_config:
            raise ValueError(
                f"official option {key!r} is not understood for method {method!r}; "
                f"known: {sorted(spec.official_config)}"
            )
        values[spec.official_config[key]] = value
    return make_config(method, values)


def create_learner(
    method: str,
    clip: CLIP,
    classnames: Sequence[str],
    config: MethodConfig | Mapping[str, Any] | None = None,
) -> PromptLearner:
    """Build the prompt learner ``method`` on a (frozen) CLIP for ``classnames``."""
    spec = get_method(method)
    if config is None or isinstance(config, Mapping):
        config = make_config(method, config)
    if not isinstance(config, spec.config):
        raise TypeError(f"{method} needs a {spec.config.__name__}, got {type(config).__name__}")
    return spec.learner(clip, classnames, config)


def official_to_ours(method: str, official_name: str) -> str | None:
    """Our parameter name for an official trainable parameter name (None if it is not a prompt)."""
    for pattern, target in get_method(method).official_names.items():
        m = re.fullmatch(pattern, official_name)
        if m:
            return target(m) if callable(target) else m.expand(target)
    return None


def convert_official_state_dict(method: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep the prompt tensors of an official state dict, renamed; frozen CLIP and buffers are dropped."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        ours = official_to_ours(method, name.removeprefix("module."))
        if ours is not None:
            out[ours] = value
    return out


__all__ = [
    "METHODS",
    "MethodConfig",
    "MethodSpec",
    "PromptLearner",
    "canonical_method",
    "config_from_official",
    "convert_official_state_dict",
    "create_learner",
    "get_method",
    "is_trainable",
    "list_methods",
    "make_config",
    "official_to_ours",
]
