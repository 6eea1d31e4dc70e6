"""One entry point for every protocol: :func:`run_protocol` plans a sweep, runs it and writes its results.

``run_base2novel``, ``run_few_shot``, ``run_cross_dataset`` and ``run_domain_generalization`` are the same
function with the protocol filled in. A sweep's common inputs (presets, overrides, shots, device...) are the
fields of :class:`~mmprompt.protocols.common.SweepOptions`, passed by keyword.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.clip_source import ClipSpec
from .base2novel import plan_base2novel
from .common import SweepOptions, canonical_dataset
from .few_shot import plan_few_shot
from .launch import LaunchOptions, run_and_write
from .results import ACC_METRICS, B2N_METRICS
from .transfer import CROSS_DATASET_TARGETS, DG_TARGETS, plan_transfer

__all__ = [
    "run_base2novel", "run_cross_dataset", "run_domain_generalization", "run_few_shot", "run_protocol",
    "run_transfer",
]

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "cross-dataset": CROSS_DATASET_TARGETS,
    "domain-generalization": DG_TARGETS,
}
"""The transfer protocols and the targets each evaluates by default."""


def run_protocol(
    protocol: str,
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    data_root: str | Path,
    clip_spec: ClipSpec,
    output: str | Path,
    *,
    launch: LaunchOptions | None = None,
    stop_after_runs: int | None = None,
    source: str = "imagenet",
    source_runs: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run (or finish) one protocol's sweep and return its aggregated results (also written to ``output``).

    Args:
        protocol: ``base2novel``, ``few-shot``, ``cross-dataset`` or ``domain-generalization``.
        methods: method names (``maple``, ``zeroshot``...).
        datasets: the datasets under ``data_root``; for the transfer protocols the targets (empty: the
            protocol's default targets), each evaluated with the prompts trained on ``source``.
        seeds: few-shot / run seeds (the paper: 1 2 3).
        clip_spec: a name or path for :func:`mmprompt.clip.load`, a CLIP, or a callable returning one.
        output: the sweep folder (run folders and ``results.{json,md,csv,png}``).
        launch: how the runs are executed (default: one after another in this process).
        stop_after_runs: stop after this many newly finished runs (for tests; the sweep can resume).
        source: transfer protocols: the dataset trained on.
        source_runs: transfer protocols: the sweep folder holding the source run folders (default ``output``);
            pass a cross-dataset sweep's folder to a domain-generalisation sweep to reuse its trained prompts.
        options: the other fields of :class:`SweepOptions`: ``presets`` (method -> preset name, YAML path or
            :class:`~mmprompt.config.RunConfig`; default the method's preset for the protocol), ``overrides``
            (dotted, for every run: ``["optim.epochs=2"]``), ``progress``, ``shots``, ``clip_activation``,
            ``device``, ``ctx``. few-shot takes several ``shots`` (``[1, 2, 4, 8, 16]``): one sweep, one
            table and one curve (``results["curve"]``, see :mod:`mmprompt.protocols.curve`).

    Returns:
        The results dict (see :func:`mmprompt.protocols.results.aggregate`); runs that failed for good are
        listed under ``failed``. Transfer: the source is tagged ``role: source`` and the average row is over the
        targets; target evaluations are cached in ``<run>/eval/<target>.json``.
    """
    shots = options.get("shots", 16)
    if not isinstance(shots, int):
        shots = sorted({int(k) for k in shots})
        if protocol != "few-shot" and len(shots) > 1:
            raise ValueError(f"several shot counts ({shots}) are for the few-shot protocol; {protocol} takes one")
        if len(shots) > 1:
            return _few_shot_curve(methods, datasets, seeds, data_root, clip_spec, output, shots, launch,
                                   stop_after_runs, options)
        options = {**options, "shots": shots[0]}
    if protocol in DEFAULT_TARGETS:
        source = canonical_dataset(source)
        targets = [canonical_dataset(t) for t in (datasets or DEFAULT_TARGETS[protocol])]
        opts = SweepOptions(methods, [source, *targets], seeds, data_root, clip_spec, output, **options)
        roles = {source: "source", **{t: "target" for t in targets}}
        return run_and_write(opts, protocol, plan_transfer(opts, source, targets, source_runs), ACC_METRICS, launch,
                             {"source": source, "targets": targets}, stop_after_runs, averaged=targets, roles=roles)
    opts = SweepOptions(methods, datasets, seeds, data_root, clip_spec, output, **options)
    if protocol == "base2novel":
        return run_and_write(opts, protocol, plan_base2novel(opts), B2N_METRICS, launch,
                             {"expected_datasets": list(opts.datasets)}, stop_after_runs)
    if protocol == "few-shot":
        return run_and_write(opts, protocol, plan_few_shot(opts), ACC_METRICS, launch, {}, stop_after_runs)
    raise ValueError(f"unknown protocol {protocol!r}; expected base2novel, few-shot, {', '.join(DEFAULT_TARGETS)}")


def _few_shot_curve(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], data_root: str | Path,
                    clip_spec: ClipSpec, output: str | Path, shots: list[int], launch: LaunchOptions | None,
                    stop_after_runs: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """Few-shot at every count of ``shots``, run as one sweep (one launch), written as one table and curve."""
    from ..engine.distributed import barrier
    from .curve import combine_shots
    from .launch import run_specs
    from .plan import sweep_results
    from .results import write_results

    per_k = {k: SweepOptions(methods, datasets, seeds, data_root, clip_spec, output, **{**options, "shots": k})
             for k in shots}
    specs = {k: plan_few_shot(o) for k, o in per_k.items()}
    first = per_k[shots[0]]
    launch = launch or LaunchOptions(progress=first.progress)
    outcome = run_specs([s for k in shots for s in specs[k]], first.clip_spec, first.clip_activation, first.ctx,
                        launch, stop_after_runs)
    per_shots = {k: sweep_results("few-shot", specs[k], outcome, ACC_METRICS, list(first.datasets),
                                  extra={"seeds": [int(s) for s in seeds], "shots": k}) for k in shots}
    results = combine_shots(per_shots, seeds)
    if first.ctx.is_main:
        write_results(results, first.output)
    barrier(first.ctx)
    return results


run_transfer = run_protocol
"""Cross-dataset or domain generalisation (``run_transfer("cross-dataset", methods, targets, ...)``)."""


def run_base2novel(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Base-to-novel generalisation: :func:`run_protocol` with ``protocol="base2novel"``."""
    return run_protocol("base2novel", *args, **kwargs)


def run_few_shot(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Few-shot classification on all classes: :func:`run_protocol` with ``protocol="few-shot"``."""
    return run_protocol("few-shot", *args, **kwargs)


def run_cross_dataset(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """ImageNet -> the other 10 datasets: :func:`run_protocol` with ``protocol="cross-dataset"``."""
    return run_protocol("cross-dataset", *args, **kwargs)


def run_domain_generalization(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """ImageNet -> ImageNetV2, -Sketch, -A, -R: :func:`run_protocol` with ``protocol="domain-generalization"``."""
    return run_protocol("domain-generalization", *args, **kwargs)
