"""Base-to-novel generalisation: train on the base half of the classes, test on base and on novel.

Per (method, dataset, seed): few-shot sampling with the seed, train on the base classes, evaluate on the
test images of the base classes, then point the same prompts at the novel class names and evaluate on
the test images of the novel classes. Zero-shot CLIP is evaluated the same way without training.
"""

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
from .results import B2N_METRICS

__all__ = ["plan_base2novel", "run_base2novel"]

logger = logging.getLogger(__name__)
PROTOCOL = "base2novel"


def plan_base2novel(opts: SweepOptions) -> list[RunSpec]:
    """One spec per (method, dataset, seed), in that order, trained on the base classes."""
    return plan_per_dataset(opts, PROTOCOL, "base")


def run_base2novel(
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
    stop_after_runs: int | None = None,
) -> dict[str, Any]:
    """Run (or finish) the base-to-novel sweep and return the aggregated results.

    Args:
        methods: method names (``maple``, ``zeroshot``...).
        datasets: dataset names under ``data_root``.
        seeds: few-shot / run seeds (the paper: 1 2 3).
        clip_spec: a name or path for :func:`mmprompt.clip.load`, a CLIP, or a callable returning one.
        output: the sweep folder (run folders and ``results.{json,md,csv,png}``).
        presets: method -> preset name / YAML path / :class:`RunConfig` (default: the method's b2n preset).
        overrides: dotted overrides for every run (``["optim.epochs=2"]``).
        launch: how the runs are executed (default: one after another in this process).
        stop_after_runs: stop after this many newly finished runs (for tests; the sweep can resume).

    Returns:
        The results dict (see :func:`mmprompt.protocols.results.aggregate`), also written to ``output``;
        runs that failed for good are listed under ``failed``.
    """
    opts = SweepOptions(methods, [canonical_dataset(d) for d in datasets], seeds, data_root, clip_spec, output,
                        presets or {}, overrides, shots, clip_activation, device, progress, ctx)
    assert opts.ctx is not None
    extra = {"seeds": list(opts.seeds), "shots": shots, "expected_datasets": list(opts.datasets)}
    return run_and_write(opts, PROTOCOL, plan_base2novel(opts), B2N_METRICS, launch, extra, stop_after_runs)
