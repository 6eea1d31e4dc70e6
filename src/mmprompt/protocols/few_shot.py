"""Few-shot classification: train and test on all classes of each dataset (CoOp's protocol)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext
from .common import SweepOptions, canonical_dataset
from .launch import LaunchOptions, plan_per_dataset, run_and_write
from .plan import RunSpec
from .results import ACC_METRICS

__all__ = ["plan_few_shot", "run_few_shot"]

logger = logging.getLogger(__name__)
PROTOCOL = "few-shot"


def plan_few_shot(opts: SweepOptions) -> list[RunSpec]:
    """One spec per (method, dataset, seed), in that order, trained on all classes."""
    return plan_per_dataset(opts, PROTOCOL, "all")


def run_few_shot(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    data_root: str | Path,
    clip_spec: ClipSpec,
    output: str | Path,
    presets: Mapping[str, str | Path | RunConfig] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    progress: bool = True,
    *,
    shots: int = 16,
    clip_activation: str | None = None,
    device: str = "auto",
    ctx: DistContext | None = None,
    launch: LaunchOptions | None = None,
) -> dict[str, Any]:
    """Train with ``shots`` images per class and test on all classes, per (method, dataset, seed)."""
    opts = SweepOptions(methods, [canonical_dataset(d) for d in datasets], seeds, data_root, clip_spec, output,
                        presets or {}, overrides, shots, clip_activation, device, progress, ctx)
    assert opts.ctx is not None
    extra = {"seeds": list(opts.seeds), "shots": shots}
    return run_and_write(opts, PROTOCOL, plan_few_shot(opts), ACC_METRICS, launch, extra)
