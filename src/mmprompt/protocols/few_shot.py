"""Few-shot classification: train and test on all classes of each dataset (CoOp's protocol)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext, barrier
from .common import SweepOptions, canonical_dataset, run_config, run_folder
from .launch import LaunchOptions, run_specs
from .plan import RunSpec, sweep_results
from .results import ACC_METRICS, write_results

__all__ = ["plan_few_shot", "run_few_shot"]

logger = logging.getLogger(__name__)
PROTOCOL = "few-shot"


def plan_few_shot(opts: SweepOptions) -> list[RunSpec]:
    """One spec per (method, dataset, seed), in that order."""
    setting = f"{PROTOCOL}-{opts.shots}shots"
    output = Path(opts.output).absolute()
    return [
        RunSpec(PROTOCOL, method, dataset, int(seed), str(run_folder(output, method, dataset, setting, seed)),
                run_config(opts, method, PROTOCOL, dataset, seed, subsample="all").to_dict())
        for method in opts.methods for dataset in opts.datasets for seed in opts.seeds
    ]


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
    specs = plan_few_shot(opts)
    outcome = run_specs(specs, opts.clip_spec, opts.clip_activation, opts.ctx, launch or LaunchOptions(progress=progress))
    results = sweep_results(PROTOCOL, specs, outcome, ACC_METRICS, list(opts.datasets),
                            extra={"seeds": list(opts.seeds), "shots": shots})
    if opts.ctx.is_main:
        write_results(results, opts.output)
    barrier(opts.ctx)
    return results
