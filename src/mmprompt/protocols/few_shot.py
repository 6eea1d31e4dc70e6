"""Few-shot classification: train and test on all classes of each dataset (CoOp's protocol)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext, barrier
from ..engine.run import load_splits, run_experiment
from .common import ClipProvider, SweepOptions, canonical_dataset, finished_metrics, run_config, run_folder
from .results import ACC_METRICS, aggregate, write_results

__all__ = ["run_few_shot"]

logger = logging.getLogger(__name__)
PROTOCOL = "few-shot"


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
) -> dict[str, Any]:
    """Train with ``shots`` images per class and test on all classes, per (method, dataset, seed)."""
    opts = SweepOptions(methods, [canonical_dataset(d) for d in datasets], seeds, data_root, clip_spec, output,
                        presets or {}, overrides, shots, clip_activation, device, progress, ctx)
    assert opts.ctx is not None
    clip = ClipProvider(opts.clip_spec, opts.clip_activation, opts.ctx)
    runs: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for method in opts.methods:
        for dataset in opts.datasets:
            for seed in opts.seeds:
                cfg = run_config(opts, method, PROTOCOL, dataset, seed, subsample="all")
                folder = run_folder(opts.output, method, dataset, f"{PROTOCOL}-{shots}shots", seed)
                metrics = finished_metrics(folder)
                if metrics is None:
                    logger.info("few-shot: %s on %s, seed %d -> %s", method, dataset, seed, folder)
                    splits = load_splits(cfg, subsample="all", ctx=opts.ctx)
                    model, info = clip.get()
                    metrics = run_experiment(cfg, model, info, folder, train_splits=splits, evals={"test": splits},
                                             ctx=opts.ctx, progress=progress, extra={"protocol": PROTOCOL})
                if metrics is not None:
                    runs.setdefault(method, {}).setdefault(dataset, {})[seed] = {
                        "accuracy": metrics["eval"]["test"]["accuracy"]
                    }
    results = aggregate(PROTOCOL, runs, ACC_METRICS, average_over=opts.datasets,
                        extra={"seeds": list(opts.seeds), "shots": shots})
    if opts.ctx.is_main:
        write_results(results, opts.output)
    barrier(opts.ctx)
    return results
