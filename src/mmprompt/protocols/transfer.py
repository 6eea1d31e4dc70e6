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
from ..engine.distributed import DistContext
from .common import SweepOptions, canonical_dataset, run_config, run_folder
from .launch import LaunchOptions, run_and_write
from .plan import RunSpec
from .results import ACC_METRICS

__all__ = [
    "CROSS_DATASET_TARGETS", "DG_TARGETS", "plan_transfer", "run_cross_dataset", "run_domain_generalization",
    "run_transfer",
]

logger = logging.getLogger(__name__)

CROSS_DATASET_TARGETS: tuple[str, ...] = (
    "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd",
    "eurosat", "ucf101",
)
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def plan_transfer(opts: SweepOptions, source: str, targets: Sequence[str],
                  source_runs: str | Path | None = None) -> list[RunSpec]:
    """One spec per (method, seed): train on ``source`` (its folder under ``source_runs``, default the sweep's
    output), evaluate on its test set and on every target."""
    base = Path(source_runs or opts.output).absolute()
    return [
        RunSpec("transfer", method, source, int(seed),
                str(run_folder(base, method, source, f"source-{opts.shots}shots", seed)),
                run_config(opts, method, "transfer", source, seed, subsample="all").to_dict(), tuple(targets))
        for method in opts.methods for seed in opts.seeds
    ]


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
    launch: LaunchOptions | None = None,
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
    roles = {source: "source", **{t: "target" for t in targets}}
    extra = {"seeds": list(opts.seeds), "shots": shots, "source": source, "targets": targets}
    return run_and_write(opts, protocol, plan_transfer(opts, source, targets, source_runs), ACC_METRICS, launch,
                         extra, averaged=targets, roles=roles)


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
