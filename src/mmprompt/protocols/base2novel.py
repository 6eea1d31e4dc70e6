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
from ..engine.distributed import DistContext, barrier
from ..engine.run import load_splits, run_experiment
from .common import ClipProvider, SweepOptions, canonical_dataset, finished_metrics, run_config, run_folder
from .results import B2N_METRICS, aggregate, write_results

__all__ = ["run_base2novel"]

logger = logging.getLogger(__name__)
PROTOCOL = "base2novel"


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
        stop_after_runs: stop after this many newly finished runs (for tests; the sweep can resume).

    Returns:
        The results dict (see :func:`mmprompt.protocols.results.aggregate`), also written to ``output``.
    """
    opts = SweepOptions(methods, [canonical_dataset(d) for d in datasets], seeds, data_root, clip_spec, output,
                        presets or {}, overrides, shots, clip_activation, device, progress, ctx)
    assert opts.ctx is not None
    clip = ClipProvider(opts.clip_spec, opts.clip_activation, opts.ctx)
    setting = f"{PROTOCOL}-{shots}shots"
    runs: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    total = len(opts.methods) * len(opts.datasets) * len(opts.seeds)
    k = new = 0
    for method in opts.methods:
        for dataset in opts.datasets:
            for seed in opts.seeds:
                k += 1
                cfg = run_config(opts, method, "base2novel", dataset, seed, subsample="base")
                folder = run_folder(opts.output, method, dataset, setting, seed)
                metrics = finished_metrics(folder)
                if metrics is None and (stop_after_runs is None or new < stop_after_runs):
                    logger.info("run %d/%d: %s on %s, seed %d -> %s", k, total, method, dataset, seed, folder)
                    base = load_splits(cfg, subsample="base", ctx=opts.ctx)
                    novel = load_splits(cfg, subsample="new", ctx=opts.ctx)
                    model, info = clip.get()
                    metrics = run_experiment(
                        cfg, model, info, folder, train_splits=base, evals={"base": base, "novel": novel},
                        ctx=opts.ctx, progress=progress, extra={"protocol": PROTOCOL},
                    )
                    new += 1
                if metrics is not None:
                    runs.setdefault(method, {}).setdefault(dataset, {})[seed] = {
                        "base": metrics["eval"]["base"]["accuracy"], "novel": metrics["eval"]["novel"]["accuracy"],
                    }
    results = aggregate(PROTOCOL, runs, B2N_METRICS, average_over=opts.datasets,
                        extra={"seeds": list(opts.seeds), "shots": shots, "expected_datasets": list(opts.datasets)})
    if opts.ctx.is_main:
        write_results(results, opts.output)
    barrier(opts.ctx)
    return results
