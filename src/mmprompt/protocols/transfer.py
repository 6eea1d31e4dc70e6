"""Cross-dataset transfer and domain generalisation: train once on a source, evaluate on targets.

Per (method, seed): train on the source dataset (ImageNet, all classes, 16 shots) and evaluate on its
test set; then evaluate the same prompts on each target's test set with all the target's classes
(ImageNet-A and -R have their 200-class subsets, read from their folders). Cross-dataset and domain
generalisation share the source run folder, so running both trains each (method, seed) once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext, barrier
from ..engine.run import evaluate_split, learner_for_eval, load_splits, read_metrics, run_experiment
from ..fileio import atomic_write_json
from .common import ClipProvider, SweepOptions, canonical_dataset, finished_metrics, run_config, run_folder
from .results import ACC_METRICS, aggregate, write_results

__all__ = ["CROSS_DATASET_TARGETS", "DG_TARGETS", "run_cross_dataset", "run_domain_generalization", "run_transfer"]

logger = logging.getLogger(__name__)

CROSS_DATASET_TARGETS: tuple[str, ...] = (
    "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd",
    "eurosat", "ucf101",
)
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def run_transfer(
    protocol: str,
    methods: Sequence[str],
    targets: Sequence[str],
    seeds: Sequence[int],
    data_root: str | Path,
    clip_spec: ClipSpec,
    output: str | Path,
    presets: Mapping[str, str | Path | RunConfig] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    progress: bool = True,
    *,
    source: str = "imagenet",
    source_runs: str | Path | None = None,
    shots: int = 16,
    clip_activation: str | None = None,
    device: str = "auto",
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """Train on ``source`` per (method, seed) and evaluate on every target.

    Returns the results (also written to ``output`` as ``results.{json,md,csv,png}``); the source is
    tagged ``role: source`` and the average row is over the targets. Target evaluations are cached in
    ``<run>/eval/<target>.json``. ``source_runs`` is the sweep folder holding the source run folders
    (default ``output``): pass a cross-dataset sweep's folder to a domain-generalisation sweep to reuse
    its trained prompts.
    """
    source = canonical_dataset(source)
    targets = [canonical_dataset(t) for t in targets]
    opts = SweepOptions(methods, [source, *targets], seeds, data_root, clip_spec, output, presets or {},
                        overrides, shots, clip_activation, device, progress, ctx)
    assert opts.ctx is not None
    clip = ClipProvider(opts.clip_spec, opts.clip_activation, opts.ctx)
    runs: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for method in opts.methods:
        for seed in opts.seeds:
            cfg = run_config(opts, method, "transfer", source, seed, subsample="all")
            folder = run_folder(Path(source_runs or opts.output), method, source, f"source-{shots}shots", seed)
            metrics = finished_metrics(folder)
            if metrics is None:
                logger.info("%s: training %s on %s, seed %d -> %s", protocol, method, source, seed, folder)
                splits = load_splits(cfg, subsample="all", ctx=opts.ctx)
                model, info = clip.get()
                metrics = run_experiment(cfg, model, info, folder, train_splits=splits, evals={"test": splits},
                                         ctx=opts.ctx, progress=progress, extra={"protocol": "transfer"})
            if metrics is None:
                continue
            per = runs.setdefault(method, {})
            per.setdefault(source, {})[seed] = {"accuracy": metrics["eval"]["test"]["accuracy"]}
            for target in targets:
                result = _evaluate_target(cfg, folder, target, clip, opts)
                per.setdefault(target, {})[seed] = {"accuracy": result["accuracy"]}
    roles = {source: "source", **{t: "target" for t in targets}}
    results = aggregate(protocol, runs, ACC_METRICS, average_over=targets, roles=roles,
                        extra={"seeds": list(opts.seeds), "shots": shots, "source": source, "targets": targets})
    if opts.ctx.is_main:
        write_results(results, opts.output)
    barrier(opts.ctx)
    return results


def _evaluate_target(cfg: RunConfig, folder: Path, target: str, clip: ClipProvider, opts: SweepOptions) -> dict:
    """The accuracy of the run's prompts on one target (cached in ``<run>/eval/<target>.json``)."""
    assert opts.ctx is not None
    name = f"eval/{target}.json"
    cached = read_metrics(folder, name)
    if cached is not None:
        return cached
    splits = load_splits(cfg, subsample="all", shots=0, dataset=target, ctx=opts.ctx)
    model, _ = clip.get()
    learner = learner_for_eval(folder, cfg, model, splits)
    result = evaluate_split(learner, splits, cfg, opts.ctx, opts.progress, desc=f"{target} test").to_dict()
    result["dataset"] = target
    if opts.ctx.is_main:
        atomic_write_json(folder / name, result)
    barrier(opts.ctx)
    return result


def run_cross_dataset(
    methods: Sequence[str],
    seeds: Sequence[int],
    data_root: str | Path,
    clip_spec: ClipSpec,
    output: str | Path,
    targets: Sequence[str] = CROSS_DATASET_TARGETS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Cross-dataset transfer: ImageNet -> the other 10 datasets (see :func:`run_transfer`)."""
    return run_transfer("cross-dataset", methods, targets, seeds, data_root, clip_spec, output, **kwargs)


def run_domain_generalization(
    methods: Sequence[str],
    seeds: Sequence[int],
    data_root: str | Path,
    clip_spec: ClipSpec,
    output: str | Path,
    targets: Sequence[str] = DG_TARGETS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Domain generalisation: ImageNet -> ImageNetV2, -Sketch, -A, -R (see :func:`run_transfer`)."""
    return run_transfer("domain-generalization", methods, targets, seeds, data_root, clip_spec, output, **kwargs)
