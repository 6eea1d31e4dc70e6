"""Training and evaluation engine: optimizer and schedule, loaders, the training loop with exact resumption,
evaluation, data parallelism and single runs (:func:`run_experiment`).

Heavy modules are imported on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train": ".train",
    "TrainResult": ".train",
    "NonFiniteLossError": ".train",
    "evaluate": ".evaluate",
    "EvalResult": ".evaluate",
    "WarmupCosineLR": ".optim",
    "build_optimizer": ".optim",
    "lr_at": ".optim",
    "DistContext": ".distributed",
    "init_distributed": ".distributed",
    "run_experiment": ".run",
    "build_learner": ".run",
    "load_splits": ".run",
    "is_done": ".run",
    "resolve_clip": ".clip_source",
    "seed_everything": ".checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
