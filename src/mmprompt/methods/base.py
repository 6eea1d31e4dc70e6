"""The pieces built-in methods share, and the historical import path of the contract.

The contract itself is :mod:`mmprompt.methods.learner` (:class:`PromptLearner` and its hooks); the text
machinery is :mod:`mmprompt.methods.encoding`. Both are re-exported here, so ``from mmprompt.methods.base
import PromptLearner`` keeps working.
"""

from __future__ import annotations

import torch
from torch import nn

from .encoding import clean_classnames, shared_prefix_length
from .learner import TRAINABLE_PREFIX, MethodConfig, PromptLearner, is_trainable, legacy_name

__all__ = ["TRAINABLE_PREFIX", "MethodConfig", "PromptLearner", "check_depth", "clean_classnames", "is_trainable",
           "legacy_name", "normal_init", "shared_prefix_length"]


def check_depth(what: str, depth: int, layers: int) -> None:
    """Raise ValueError unless ``0 <= depth <= layers`` (a prompt depth against the tower's blocks)."""
    if depth < 0:
        raise ValueError(f"{what} must be >= 0, got {depth}")
    if depth > layers:
        raise ValueError(f"{what} = {depth} is larger than the model's {layers} layers")


def normal_init(*shape: int, std: float = 0.02) -> nn.Parameter:
    """A new parameter of ``shape`` drawn from N(0, std^2) (the official prompt initialisation)."""
    return nn.Parameter(torch.randn(*shape) * std)
