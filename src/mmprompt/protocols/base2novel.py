"""Base-to-novel generalisation: train on the base half of the classes, test on base and on novel.

Per (method, dataset, seed): few-shot sampling with the seed, train on the base classes, evaluate on the
test images of the base classes, then point the same prompts at the novel class names and evaluate on
the test images of the novel classes. Zero-shot CLIP is evaluated the same way without training.
"""

from __future__ import annotations

from .common import SweepOptions
from .launch import plan_per_dataset
from .plan import RunSpec

__all__ = ["plan_base2novel"]
PROTOCOL = "base2novel"


def plan_base2novel(opts: SweepOptions) -> list[RunSpec]:
    """One spec per (method, dataset, seed), in that order, trained on the base classes."""
    return plan_per_dataset(opts, PROTOCOL, "base")
