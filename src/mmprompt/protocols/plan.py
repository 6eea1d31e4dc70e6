"""A sweep as plain data: one :class:`RunSpec` per (method, dataset, seed) run, executed by a launcher.

A spec holds everything a run needs (the resolved config, the CLIP to load, the evaluations, the thread
count and deterministic settings), so the run computes the same numbers wherever it is placed: in this
process (:class:`~mmprompt.protocols.launch.SequentialLauncher`) or in a Ray task on any node
(:class:`~mmprompt.protocols.ray_launcher.RayLauncher`). :func:`execute` runs one spec into a folder;
:func:`completed_payload` reads a finished run back; the protocols turn payloads into results.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..engine.distributed import DistContext, barrier

__all__ = ["RUN_LOG", "RunSpec", "completed_payload", "execute", "run_settings"]

logger = logging.getLogger(__name__)

RUN_LOG = "run.log"
"""The log of a run's attempts, in its run folder."""

# what each protocol trains on and evaluates: (training subsample, {result name: subsample})
_SPLITS: dict[str, tuple[str, dict[str, str]]] = {
    "base2novel": ("base", {"base": "base", "novel": "new"}),
    "few-shot": ("all", {"test": "all"}),
    "transfer": ("all", {"test": "all"}),
}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep, as plain data (picklable, JSON-able)."""

    protocol: str
    """``base2novel``, ``few-shot`` or ``transfer`` (the source run of cross-dataset / domain generalisation)."""
    method: str
    dataset: str
    seed: int
    folder: str
    """The run folder in the sweep's output (absolute)."""
    config: dict[str, Any]
    """The resolved :class:`RunConfig` as a dict."""
    targets: tuple[str, ...] = ()
    """Transfer: the datasets evaluated with the trained prompts (cached in ``<run>/eval/<target>.json``)."""
    threads: int | None = None
    """torch intra-op threads while the run runs (None: leave the process's setting)."""
    deterministic: bool = False
    """``torch.use_deterministic_algorithms(True)`` while the run runs."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """How reports name the run: ``maple on eurosat, seed 1 (base2novel)``."""
        return f"{self.method} on {self.dataset}, seed {self.seed} ({self.protocol})"

    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_threads(self, threads: int | None, deterministic: bool | None = None) -> RunSpec:
        from dataclasses import replace

        return replace(self, threads=threads,
                       deterministic=self.deterministic if deterministic is None else deterministic)


@contextlib.contextmanager
def run_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """The run's thread count and deterministic-algorithm setting, restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what CUDA's deterministic GEMMs need
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        if deterministic and old_cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def run_log(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Append this process's log records to ``<folder>/run.log`` while the run runs."""
    if not enabled:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _target_result(spec: RunSpec, cfg: RunConfig, folder: Path, target: str, clip: Any, ctx: DistContext,
                   progress: bool) -> dict[str, Any]:
    """The accuracy of the run's prompts on one target (cached in ``<run>/eval/<target>.json``)."""
    from ..engine.run import evaluate_split, learner_for_eval, load_splits, read_metrics
    from ..fileio import atomic_write_json

    name = f"eval/{target}.json"
    cached = read_metrics(folder, name)
    if cached is not None:
        return cached
    splits = load_splits(cfg, subsample="all", shots=0, dataset=target, ctx=ctx)
    model, _ = clip.get()
    learner = learner_for_eval(folder, cfg, model, splits)
    result = evaluate_split(learner, splits, cfg, ctx, progress, desc=f"{target} test").to_dict()
    result["dataset"] = target
    if ctx.is_main:
        atomic_write_json(folder / name, result)
    barrier(ctx)
    return result


def execute(
    spec: RunSpec,
    clip: Any,
    ctx: DistContext,
    folder: str | Path | None = None,
    progress: bool = False,
    log_to_folder: bool = True,
) -> dict[str, Any]:
    """Run (or finish) ``spec`` into ``folder`` (default ``spec.folder``) and return its payload.

    ``clip`` is a :class:`~mmprompt.protocols.common.ClipProvider`. The payload is
    ``{"metrics": <metrics.json>, "targets": {target: <eval/target.json>}}``.
    """
    from ..engine.run import load_splits, run_experiment

    folder = Path(folder or spec.folder)
    cfg = spec.run_config()
    train_sub, eval_subs = _SPLITS[spec.protocol]
    with run_settings(spec.threads, spec.deterministic), run_log(folder, log_to_folder and ctx.is_main):
        logger.info("run: %s -> %s", spec.name, folder)
        from ..engine.run import is_done, read_metrics

        metrics = read_metrics(folder) if is_done(folder) else None
        if metrics is None:
            train_splits = load_splits(cfg, subsample=train_sub, ctx=ctx)
            evals = {name: train_splits if sub == train_sub else load_splits(cfg, subsample=sub, ctx=ctx)
                     for name, sub in eval_subs.items()}
            model, info = clip.get()
            metrics = run_experiment(cfg, model, info, folder, train_splits=train_splits, evals=evals, ctx=ctx,
                                     progress=progress, extra={"protocol": spec.protocol, **spec.extra})
            if metrics is None:
                raise RuntimeError(f"{spec.name} stopped before its last epoch")
        targets = {t: _target_result(spec, cfg, folder, t, clip, ctx, progress) for t in spec.targets}
        logger.info("run finished: %s", spec.name)
    return {"metrics": metrics, "targets": targets}


def completed_payload(spec: RunSpec, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The payload of a finished run (metrics and every target evaluation on disk), else None."""
    from ..engine.run import is_done, read_metrics

    folder = Path(folder or spec.folder)
    if not is_done(folder):
        return None
    targets = {}
    for t in spec.targets:
        result = read_metrics(folder, f"eval/{t}.json")
        if result is None:
            return None
        targets[t] = result
    metrics = read_metrics(folder)
    assert metrics is not None
    return {"metrics": metrics, "targets": targets}


def payload_values(spec: RunSpec, payload: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{dataset: {metric: value}}`` of one run's payload, as the protocol's results table reads them."""
    ev = payload["metrics"]["eval"]
    if spec.protocol == "base2novel":
        return {spec.dataset: {"base": ev["base"]["accuracy"], "novel": ev["novel"]["accuracy"]}}
    out = {spec.dataset: {"accuracy": ev["test"]["accuracy"]}}
    for t, result in payload.get("targets", {}).items():
        out[t] = {"accuracy": result["accuracy"]}
    return out


def payload_paths(spec: RunSpec, payload: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{dataset: {metric: inference path}}`` of the evaluations that record one (methods with several
    paths, e.g. MMRL's ``base`` / ``novel``); empty for the others."""
    ev = payload["metrics"]["eval"]
    if spec.protocol == "base2novel":
        found = {m: ev[m].get("path") for m in ("base", "novel") if m in ev}
        out = {spec.dataset: found}
    else:
        out = {spec.dataset: {"accuracy": ev.get("test", {}).get("path")}}
        for t, result in payload.get("targets", {}).items():
            out[t] = {"accuracy": result.get("path")}
    return {d: {m: p for m, p in v.items() if p} for d, v in out.items() if any(v.values())}


def sweep_results(
    protocol: str,
    specs: list[RunSpec],
    outcome: Any,
    metrics: tuple[str, ...],
    average_over: list[str],
    roles: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The protocol's results from a launcher's outcome: accuracies (by method, dataset, seed, in the order of
    ``specs``), the measured cost of each run (``costs``) and the runs that failed for good (``failed``).
    ``keep``: only these datasets (a transfer run evaluated for two protocols)."""
    from .results import aggregate, aggregate_costs

    runs: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    costs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    paths: dict[str, dict[str, dict[str, str]]] = {}
    for spec in specs:
        payload = outcome.payloads.get(spec.folder)
        if payload is None:
            continue
        for dataset, chosen in payload_paths(spec, payload).items():
            if keep is None or dataset in keep:
                paths.setdefault(spec.method, {}).setdefault(dataset, {}).update(chosen)
        for dataset, values in payload_values(spec, payload).items():
            if keep is not None and dataset not in keep:
                continue
            runs.setdefault(spec.method, {}).setdefault(dataset, {})[spec.seed] = values
        if "cost" in payload["metrics"]:
            costs.setdefault(spec.method, {}).setdefault(spec.dataset, []).append(payload["metrics"]["cost"])
    results = aggregate(protocol, runs, metrics, average_over=average_over, roles=roles, extra=extra)
    results["costs"] = aggregate_costs(costs)
    if paths:  # the inference path each number was evaluated with (methods with several paths)
        results["inference_paths"] = paths
    order = {s.folder: i for i, s in enumerate(specs)}  # in plan order, whatever order they failed in
    failed = [{k: f[k] for k in ("run", "cause", "attempts")}
              for f in sorted((f for f in outcome.failed if f["folder"] in order), key=lambda f: order[f["folder"]])]
    if failed:
        results["failed"] = failed
    return results
