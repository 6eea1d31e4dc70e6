"""CLIP: architectures as data, one model with prompt insertion points, weights, tokenizer and transforms.

>>> from mmprompt import clip
>>> model = clip.load("ViT-B/16")          # doctest: +SKIP
>>> tokenizer = clip.get_tokenizer()       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import CLIPConfig, Preprocess, get_config, list_architectures, list_models
from .describe import MissingFieldError, UnsupportedCheckpointError
from .loading import WeightsInfo, load, load_state_dict_any
from .model import CLIP, build_model
from .weights import PretrainedEntry, get_pretrained, list_pretrained

if TYPE_CHECKING:
    from .tokenizer import get_tokenizer
    from .transforms import build_transform

__all__ = [
    "CLIP",
    "CLIPConfig",
    "MissingFieldError",
    "Preprocess",
    "UnsupportedCheckpointError",
    "PretrainedEntry",
    "WeightsInfo",
    "build_model",
    "build_transform",
    "get_config",
    "get_pretrained",
    "get_tokenizer",
    "list_architectures",
    "list_models",
    "list_pretrained",
    "load",
    "load_state_dict_any",
]

# Imported on first use so that `import mmprompt.clip` does not pull in ftfy / PIL for model-only work.
_LAZY = {"get_tokenizer": ".tokenizer", "build_transform": ".transforms"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
