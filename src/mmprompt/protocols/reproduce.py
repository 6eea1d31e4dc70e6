"""``reproduce``: every protocol of the MaPLe paper for chosen methods, one launcher run, one report.

Protocols (each in ``<output>/<protocol>/`` with its ``results.*``): base-to-novel on the 11 datasets for
every chosen method; cross-dataset transfer and domain generalisation for the methods the paper reports
them for (MaPLe), sharing one source run per (method, seed) whose target evaluations serve both; few-shot
(16 shots, all classes) for every chosen method. A transductive method with a published cross-dataset
entry (PromptKD) gets its own cross-dataset runs, one per target (see :mod:`mmprompt.protocols.transfer`). ``<output>/report.{md,json}`` puts our numbers beside the
published ones (:mod:`mmprompt.protocols.published`) with the differences and the measured cost per run.

Methods not yet in the method table are listed (and their published numbers reported) but not run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext
from ..fileio import atomic_write_bytes, atomic_write_json
from .base2novel import plan_base2novel
from .common import SweepOptions, canonical_dataset
from .few_shot import plan_few_shot
from .launch import LaunchOptions, run_specs
from .plan import RunSpec, completed_payload, sweep_results
from .published import comparison_rows, format_report, published_results, published_table
from .results import ACC_METRICS, B2N_METRICS, TRANSDUCTIVE, TRANSDUCTIVE_NOTE, training_kind, write_results
from .transfer import CROSS_DATASET_TARGETS, DG_TARGETS, plan_transductive_transfer, plan_transfer

__all__ = ["PAPER_DATASETS", "PAPER_METHODS", "REPRODUCE_PROTOCOLS", "ReproducePlan", "estimate_hours",
           "plan_reproduce", "run_reproduce"]

logger = logging.getLogger(__name__)

REPRODUCE_PROTOCOLS = ("base2novel", "cross-dataset", "domain-generalization", "few-shot")
PAPER_METHODS: tuple[str, ...] = ("zeroshot", "coop", "cocoop", "vpt", "language_only", "ivlp", "maple")
"""The methods of the MaPLe paper's base-to-novel table (``maple-table`` on the command line)."""
PAPER_DATASETS: tuple[str, ...] = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101",
)
SOURCE = "imagenet"
TRANSFER = {"cross-dataset": CROSS_DATASET_TARGETS, "domain-generalization": DG_TARGETS}


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan as listed by ``--dry-run`` (``spec`` is None for a method not in the table yet)."""

    protocol: str
    method: str
    dataset: str
    seed: int
    targets: tuple[str, ...] = ()
    spec: RunSpec | None = None
    epochs: int | None = None
    shots: int = 16


@dataclass
class ReproducePlan:
    """What ``reproduce`` runs: the specs (one launcher call), and per protocol its runs and datasets."""

    methods: list[str]
    output: Path
    runs: list[PlannedRun] = field(default_factory=list)
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    """protocol -> {"methods", "datasets" (the table's), "specs", "skipped" (why not run), "unpublished" (the
    methods it runs that have no published number to compare with)}."""
    left_out: list[str] = field(default_factory=list)
    """Protocols not planned by default: no published numbers for any chosen method (``--protocols`` adds them)."""

    @property
    def specs(self) -> list[RunSpec]:
        seen: dict[str, RunSpec] = {}
        for run in self.runs:
            if run.spec is not None:
                seen.setdefault(run.spec.folder, run.spec)
        return list(seen.values())


def _known_method(name: str) -> str | None:
    """The name ``name`` runs under (a variant such as ``dept_coop`` keeps its own), or None when it is not in
    the method table."""
    from ..methods import method_variant

    try:
        return method_variant(name)
    except KeyError:
        return None


def resolve_methods(names: Sequence[str]) -> list[str]:
    """Method keys (``maple-table`` = the 7 methods of the paper's table); a name that is neither in the method
    table nor among the published results is an error."""
    published = published_results()
    known_published = {m for p in REPRODUCE_PROTOCOLS for m in published.get(p, {})}
    out: list[str] = []
    for name in names:
        for n in (PAPER_METHODS if name.lower() in ("maple-table", "maple_table") else [name]):
            key = _known_method(n) or n.lower().replace("-", "_")
            if _known_method(n) is None and key not in known_published:
                raise ValueError(f"unknown method {n!r}: neither in the method table nor among the published results "
                                 f"({', '.join(sorted(known_published))})")
            if key not in out:
                out.append(key)
    return out


def _sub(opts: SweepOptions, methods: Sequence[str], datasets: Sequence[str], output: Path) -> SweepOptions:
    """``opts`` for a part of the reproduction (overrides already split per method stay as they are)."""
    sub = copy.copy(opts)
    sub.methods, sub.datasets, sub.output = list(methods), list(datasets), output
    return sub


def plan_reproduce(
    methods: Sequence[str],
    data_root: str | Path,
    clip_spec: ClipSpec,
    output: str | Path,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] = (1, 2, 3),
    protocols: Sequence[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    shots: int = 16,
    clip_activation: str | None = None,
    device: str = "auto",
    ctx: DistContext | None = None,
) -> ReproducePlan:
    """Every run of the chosen protocols for ``methods`` (see the module docstring). ``protocols`` None: every
    protocol with a published number for one of the methods (the others are listed in ``plan.left_out``)."""
    methods = resolve_methods(methods)
    output = Path(output).absolute()
    chosen = [canonical_dataset(d) for d in datasets] if datasets else None
    table_datasets = chosen or list(PAPER_DATASETS)
    published = published_results()
    known = [m for m in methods if _known_method(m)]
    plan = ReproducePlan(methods, output)
    if protocols is None:
        protocols = [p for p in REPRODUCE_PROTOCOLS if any(m in published_table(p, published) for m in methods)]
        plan.left_out = [p for p in REPRODUCE_PROTOCOLS if p not in protocols]
    opts = (SweepOptions(known, table_datasets, seeds, data_root, clip_spec, output, {}, overrides, shots,
                         clip_activation, device, False, ctx) if known else None)
    for protocol in protocols:
        if protocol not in REPRODUCE_PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected {', '.join(REPRODUCE_PROTOCOLS)}")
        if protocol in TRANSFER:
            table = published_table(protocol, published)
            in_paper = [m for m in methods if m in table]
            targets = [t for t in TRANSFER[protocol] if chosen is None or t in chosen]
            entry = {"methods": in_paper, "datasets": [SOURCE, *targets], "targets": targets, "specs": []}
            if not in_paper:
                entry["skipped"] = "the paper reports it for " + ", ".join(table) + " only"
            elif chosen is not None and SOURCE not in chosen and not all(_transductive(m) for m in in_paper):
                entry["skipped"] = f"its source ({SOURCE}) is not among --datasets"
            plan.protocols[protocol] = entry
            continue
        entry = {"methods": methods, "datasets": table_datasets, "specs": [],
                 "unpublished": [m for m in methods if m not in published.get(protocol, {})]}
        plan.protocols[protocol] = entry
        planner = plan_base2novel if protocol == "base2novel" else plan_few_shot
        specs = planner(_sub(opts, known, table_datasets, output / protocol)) if opts and known else []
        by_key = {(s.method, s.dataset, s.seed): s for s in specs}
        entry["specs"] = specs
        for m in methods:
            for d in table_datasets:
                for seed in seeds:
                    spec = by_key.get((m, d, int(seed)))
                    plan.runs.append(PlannedRun(protocol, m, d, int(seed), (), spec, _epochs(spec), shots))
    # one source run per (method, seed) serves both transfer protocols: its targets are their union
    active = {p: e for p, e in plan.protocols.items() if p in TRANSFER and "skipped" not in e}
    if active:
        t_methods = sorted({m for e in active.values() for m in e["methods"] if not _transductive(m)},
                           key=methods.index)
        targets = [t for e in active.values() for t in e["targets"]]
        t_known = [m for m in t_methods if _known_method(m)]
        specs = (plan_transfer(_sub(opts, t_known, [SOURCE, *targets], output / "transfer"), SOURCE, targets)
                 if opts and t_known else [])
        by_key = {(s.method, s.seed): s for s in specs}
        for m in t_methods:
            for seed in seeds:
                spec = by_key.get((m, int(seed)))
                plan.runs.append(PlannedRun("transfer", m, SOURCE, int(seed), tuple(targets), spec, _epochs(spec),
                                            shots))
        # transductive methods (PromptKD): one run per target of the protocols they are published for
        for m in sorted({m for e in active.values() for m in e["methods"] if _transductive(m)}, key=methods.index):
            m_targets = [t for e in active.values() if m in e["methods"] for t in e["targets"]]
            own = plan_transductive_transfer(_sub(opts, [m], m_targets, output / "transfer"), [m], SOURCE, m_targets)
            specs += own
            for spec in own:
                plan.runs.append(PlannedRun("transfer", m, spec.dataset, spec.seed, (), spec, _epochs(spec), 0))
        for e in active.values():
            e["specs"] = [s for s in specs if s.method in e["methods"]]
    return plan


def _transductive(method: str) -> bool:
    """A method of the table that trains on each target's unlabelled images (its own transfer runs)."""
    return _known_method(method) is not None and training_kind(method) == TRANSDUCTIVE


def _epochs(spec: RunSpec | None) -> int | None:
    """The epochs a run trains: 0 for a method with nothing to train (zero-shot CLIP)."""
    if spec is None:
        return None
    if not method_trains(spec.method, spec.config.get("method")):
        return 0
    if spec.config["optim"].get("epochs") is not None:
        return int(spec.config["optim"]["epochs"])
    # a run measured in iterations (CLIP-LoRA: 500 x shots): its passes over the training images
    from ..engine.optim import schedule_plan

    cfg, n = spec.run_config(), _num_classes(spec.dataset)
    if n is None:
        return None
    images = cfg.data.shots * (math.ceil(n / 2) if spec.protocol == "base2novel" else n)
    batches = images // cfg.optim.batch_size if images >= cfg.optim.batch_size else 1  # drop_last, as the loader
    return schedule_plan(cfg.optim, cfg.data.shots, math.ceil(batches / cfg.optim.grad_accum)).epochs


_TRAINS: dict[str, bool] = {}


def method_trains(method: str, config: Mapping[str, Any] | None = None) -> bool:
    """Whether ``method`` has trainable parameters (built once on the meta device, so no memory is used;
    True when it cannot be built there)."""
    if method not in _TRAINS:
        import torch

        from ..clip.config import get_config
        from ..clip.model import CLIP
        from ..methods import create_learner

        options = {k: v for k, v in dict(config or {}).items() if k != "name"}
        try:
            with torch.device("meta"):
                learner = create_learner(method, CLIP(get_config("ViT-B/16")), ["a", "b"], options)
            _TRAINS[method] = bool(learner.trainable_parameters())
        except Exception:  # noqa: BLE001 - a method that cannot be built on meta: assume it trains
            _TRAINS[method] = True
    return _TRAINS[method]


# ------------------------------------------------------------------------------------------------ estimate
def _num_classes(dataset: str) -> int | None:
    try:
        from ..data import get_dataset_info

        return int(get_dataset_info(dataset).num_classes)
    except (KeyError, ImportError):
        return None


def _rates() -> tuple[float, float]:
    """Seconds per training image and per test image of the official MaPLe code on one A100, fitted to its two
    recorded timings: an ImageNet base-to-novel seed (1 h) and the whole 11-dataset row of 3 seeds (7 h)."""
    compute = published_results()["compute"]
    tests = compute["test_images"]
    seed_s = compute["maple_imagenet_b2n_seed_hours"]["value"] * 3600
    row_s = compute["b2n_row_hours"]["maple"] * 3600 / 3
    epochs, shots = 5, 16
    t1 = shots * math.ceil(1000 / 2) * epochs
    tr = sum(shots * math.ceil((_num_classes(d) or 0) / 2) * epochs for d in PAPER_DATASETS)
    er = sum(tests[d] for d in PAPER_DATASETS)
    # seed_s = t1 * a + tests[imagenet] * b;  row_s = tr * a + er * b
    det = t1 * er - tr * tests["imagenet"]
    a = (seed_s * er - row_s * tests["imagenet"]) / det
    b = (t1 * row_s - tr * seed_s) / det
    return a, b


def estimate_hours(run: PlannedRun) -> float | None:
    """GPU hours of one run at the official MaPLe code's recorded A100 speed (None: dataset size unknown).

    Training images (shots x trained classes x epochs) and test images (the dataset's, plus the targets')
    are priced at the rates of :func:`_rates`; a method with a recorded base-to-novel row time (PromptSRC)
    is scaled to it.
    """
    compute = published_results()["compute"]
    tests = compute["test_images"]
    n = _num_classes(run.dataset)
    if n is None:
        return None
    a, b = _rates()
    epochs = 5 if run.epochs is None else run.epochs  # 0: nothing to train, priced as evaluation only
    if run.shots == 0 and epochs:  # the full training split (a transductive run): its size is not recorded
        return None
    trained = math.ceil(n / 2) if run.protocol == "base2novel" else n
    test = tests.get(run.dataset)
    target_tests = [tests.get(t) for t in run.targets]
    if test is None or None in target_tests:
        return None
    seconds = run.shots * trained * epochs * a + (test + sum(t for t in target_tests if t)) * b
    row = compute["b2n_row_hours"].get(run.method)
    if run.protocol == "base2novel" and row and run.method != "maple" and epochs:
        model_row = sum(16 * math.ceil((_num_classes(d) or 0) / 2) * epochs * a + tests[d] * b
                        for d in PAPER_DATASETS) * 3
        seconds *= row * 3600 / model_row
    return seconds / 3600


def format_dry_run(plan: ReproducePlan) -> str:
    """Every run of the plan (done / to run / not available), with the GPU-hour estimate and its basis."""
    lines = [f"mmprompt reproduce: {len(plan.runs)} runs for {', '.join(plan.methods)} -> {plan.output}", ""]
    lines.append(f"{'protocol':<14} {'method':<14} {'dataset':<16} {'seed':>4} {'epochs':>6} {'status':<14} "
                 f"{'est. GPU h':>10}  evaluated on")
    totals: dict[str, float] = {}
    todo_total = 0.0
    for run in plan.runs:
        hours = estimate_hours(run)
        if run.spec is None:
            status = "not available"
        elif completed_payload(run.spec) is not None:
            status = "done"
        else:
            status = "to run"
            todo_total += hours or 0.0
        totals[run.protocol] = totals.get(run.protocol, 0.0) + (hours or 0.0)
        evals = ("+".join(run.targets) if run.targets else ("base, novel" if run.protocol == "base2novel" else "test"))
        if training_kind(run.method) == TRANSDUCTIVE:
            evals += " (transductive: trained on unlabelled images of all classes)"
        lines.append(f"{run.protocol:<14} {run.method:<14} {run.dataset:<16} {run.seed:>4} "
                     f"{run.epochs if run.epochs is not None else '?':>6} {status:<14} "
                     f"{'-' if hours is None else f'{hours:.2f}':>10}  {evals}")
    lines.append("")
    for protocol, entry in plan.protocols.items():
        if entry.get("skipped"):
            lines.append(f"{protocol}: not run ({entry['skipped']})")
        elif entry.get("unpublished"):
            lines.append(f"{protocol}: no published numbers for {', '.join(entry['unpublished'])}: those runs are "
                         "ours only, nothing to compare them with")
    for protocol in plan.left_out:
        lines.append(f"{protocol}: not planned (no published numbers for {', '.join(plan.methods)}); run it with "
                     f"--protocols {' '.join(p for p in REPRODUCE_PROTOCOLS if p not in plan.left_out)} {protocol}")
    unavailable = sorted({r.method for r in plan.runs if r.spec is None})
    if unavailable:
        lines.append(f"not in the method table yet (listed, not run; their published numbers are reported): "
                     f"{', '.join(unavailable)}")
    lines.append("estimated GPU hours: " + ", ".join(f"{p} {h:.1f}" for p, h in totals.items())
                 + f"; total {sum(totals.values()):.1f}, still to run {todo_total:.1f}")
    compute = published_results()["compute"]
    lines.append("basis: the official code on one A100 (batch 4): " + compute["maple_imagenet_b2n_seed_hours"]["source"]
                 + "; " + compute["b2n_row_hours"]["source"] + ". Training and test images are priced at the two "
                 "rates these fit; epochs come from each run's config (unknown methods: MaPLe's 5); a method with nothing to "
                 "train (zero-shot CLIP: 0 epochs) is priced as evaluation only. Methods that do "
                 "not back-propagate through the image encoder (CoOp, CoCoOp) cost less per image than MaPLe: for them "
                 "it is an upper bound. mmprompt's own runs are faster (benchmarks/README.md); the measured cost of finished runs is in report.md.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ running
def published_for_plot(protocol: str, results: dict[str, Any] | None = None,
                       paper: Sequence[str] = ()) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {dataset | "average": {metric: value}}}``: the published numbers of ``protocol`` for the plot.
    The published average is left out for a method whose average in ``results`` does not cover ``paper`` (the
    datasets the paper averages over): the two would not be comparable."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, entry in published_table(protocol).items():
        if not isinstance(entry, dict):
            continue
        values = {d: {k: float(v) for k, v in vals.items() if isinstance(v, (int, float))}
                  for d, vals in (entry.get("datasets") or {}).items()}
        ours = ((results or {}).get("methods", {}).get(method) or {}).get("average") or {}
        if entry.get("average") and set(paper) <= set(ours.get("datasets", [])):
            values["average"] = {k: float(v) for k, v in entry["average"].items() if isinstance(v, (int, float))}
        out[method] = values
    return out



def run_reproduce(
    plan: ReproducePlan,
    clip_spec: ClipSpec,
    clip_activation: str | None = None,
    ctx: DistContext | None = None,
    launch: LaunchOptions | None = None,
) -> dict[str, Any]:
    """Run the plan (finished runs are skipped), write each protocol's results and the report; returns the
    report as a dict (``sections``: rows per protocol; ``failed``: runs that failed for good)."""
    from ..engine.distributed import resolve_device
    from ..runlock import RunLock

    ctx = ctx or DistContext(device=resolve_device("auto"))
    with RunLock(plan.output, enabled=ctx.is_main, command="reproduce"):  # one reproduce per output folder
        return _run_locked(plan, clip_spec, clip_activation, ctx, launch)


def _run_locked(plan: ReproducePlan, clip_spec: ClipSpec, clip_activation: str | None, ctx: DistContext,
                launch: LaunchOptions | None) -> dict[str, Any]:
    specs = plan.specs
    outcome = run_specs(specs, clip_spec, clip_activation, ctx, launch or LaunchOptions())
    sections = []
    for protocol, entry in plan.protocols.items():
        results = None
        if entry["specs"]:
            if protocol in TRANSFER:
                roles = {SOURCE: "source", **{t: "target" for t in entry["targets"]}}
                results = sweep_results(protocol, entry["specs"], outcome, ACC_METRICS, entry["targets"], roles=roles,
                                        extra={"seeds": sorted({s.seed for s in entry["specs"]}), "source": SOURCE,
                                               "targets": entry["targets"]},
                                        keep=entry["datasets"])
            else:
                metrics = B2N_METRICS if protocol == "base2novel" else ACC_METRICS
                results = sweep_results(protocol, entry["specs"], outcome, metrics, entry["datasets"],
                                        extra={"seeds": sorted({s.seed for s in entry["specs"]})})
            if ctx.is_main:
                paper = PAPER_DATASETS if protocol in ("base2novel", "few-shot") else TRANSFER.get(protocol, ())
                write_results(results, plan.output / protocol,
                              published=published_for_plot(protocol, results, paper))
        paper = PAPER_DATASETS if protocol in ("base2novel", "few-shot") else TRANSFER.get(protocol, ())
        rows = comparison_rows(protocol, entry["methods"], results, paper)
        note = f"not run: {entry['skipped']}" if entry.get("skipped") else ""
        sections.append({"protocol": protocol, "rows": rows, "results": results, "note": note})
    report = {"methods": plan.methods, "sections": [{k: v for k, v in s.items() if k != "results"} for s in sections],
              "failed": list({f["run"]: f for s in sections for f in (s["results"] or {}).get("failed", [])}.values())}
    if ctx.is_main:
        unavailable = sorted({r.method for r in plan.runs if r.spec is None})
        notes = [f"Methods not in the method table yet (published numbers only): {', '.join(unavailable)}."] \
            if unavailable else []
        transductive = [m for m in plan.methods if training_kind(m) == TRANSDUCTIVE]
        if transductive:
            notes.append(f"Transductive methods (rows marked so; {', '.join(transductive)}): {TRANSDUCTIVE_NOTE}")
        atomic_write_json(plan.output / "report.json", json.loads(json.dumps(report)))
        atomic_write_bytes(plan.output / "report.md", format_report(sections, notes).encode("utf-8"))
    return report
