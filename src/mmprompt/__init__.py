"""mmprompt: multi-modal prompt learning (MaPLe and its baselines) on CLIP.

The heavy parts are imported on first use: ``mmprompt.Predictor`` loads :mod:`mmprompt.predict`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from .predict import Predictor

        return Predictor
    raise AttributeError(f"module 'mmprompt' has no attribute {name!r}")
