"""Few-shot classification: train and test on all classes of each dataset (CoOp's protocol)."""

from __future__ import annotations

from .common import SweepOptions
from .launch import plan_per_dataset
from .plan import RunSpec

__all__ = ["plan_few_shot"]
PROTOCOL = "few-shot"


def plan_few_shot(opts: SweepOptions) -> list[RunSpec]:
    """One spec per (method, dataset, seed), in that order, trained on all classes."""
    return plan_per_dataset(opts, PROTOCOL, "all")
