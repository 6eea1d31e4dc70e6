"""Aggregation over seeds and datasets, the harmonic mean both ways, and tables, CSV and plots.

Base-to-novel results per dataset report ``hm`` = HM of the seed-averaged Base and Novel (the official
convention) and ``hm_mean_of_seeds`` = the mean of the per-seed HMs. The average row reports ``hm`` = HM
of the dataset-averaged Base and Novel (the paper's) and ``hm_mean_of_datasets`` = the mean of the
per-dataset HMs (what some later papers report). Standard deviations are over seeds (NumPy's default,
ddof=0, as in CoOp's result parser). Accuracies are in percent.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "aggregate",
    "aggregate_costs",
    "fmt_cost",
    "format_costs",
    "format_failures",
    "format_table",
    "harmonic_mean",
    "method_label",
    "plot_results",
    "training_kind",
    "write_results",
]

B2N_METRICS = ("base", "novel")
COST_HEADING = "Cost per run (measured)"
ACC_METRICS = ("accuracy",)


TRANSDUCTIVE = "transductive"
INDUCTIVE = "inductive"
TRANSDUCTIVE_NOTE = ("transductive: trained on unlabelled images of the evaluated classes (PromptKD's protocol: the "
                     "full training split of base AND novel classes, without labels); not comparable with inductive "
                     "methods, which never see novel-class images.")
TRANSDUCTIVE_TRANSFER_NOTE = ("transductive: trained on each target's unlabelled training images, distilled from the "
                              "teacher trained on the source (PromptKD's official cross-dataset protocol), not once on "
                              "the source; not comparable with inductive methods, which never see target images "
                              "before testing.")


def transductive_note(protocol: str | None) -> str:
    """The note printed under a table with transductive rows: the transfer protocols' own, else the general one."""
    return TRANSDUCTIVE_TRANSFER_NOTE if protocol in ("cross-dataset", "domain-generalization") else TRANSDUCTIVE_NOTE


def training_kind(method: str) -> str:
    """``transductive`` for a method whose learner trains on unlabelled images of the evaluation classes, else
    ``inductive`` (from the method table; an unknown name is inductive)."""
    try:
        from ..methods import get_method

        return TRANSDUCTIVE if get_method(method).learner.transductive else INDUCTIVE
    except KeyError:
        return INDUCTIVE


def method_label(results: Mapping[str, Any], method: str) -> str:
    """``method`` as tables and plots print it: with `` (transductive)`` for transductive runs."""
    entry = results.get("methods", {}).get(method) or {}
    kind = entry.get("training") or training_kind(method)
    return f"{method} ({TRANSDUCTIVE})" if kind == TRANSDUCTIVE else method


def _transductive_notes(results: Mapping[str, Any]) -> list[str]:
    names = [m for m in results.get("methods", {}) if method_label(results, m) != m]
    return [f"{', '.join(names)}: {transductive_note(results.get('protocol'))}"] if names else []


def harmonic_mean(base: float, novel: float) -> float:
    """2BN / (B + N); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _dataset_entry(per_seed: Mapping[Any, Mapping[str, float]], metrics: Sequence[str]) -> dict[str, Any]:
    seeds = {str(s): dict(v) for s, v in sorted(per_seed.items(), key=lambda kv: int(kv[0]))}
    b2n = tuple(metrics) == B2N_METRICS
    if b2n:
        for v in seeds.values():
            v["hm"] = harmonic_mean(v["base"], v["novel"])
    keys = [*metrics, "hm"] if b2n else list(metrics)
    mean = {k: _mean([v[k] for v in seeds.values()]) for k in keys}
    std = {k: _std([v[k] for v in seeds.values()]) for k in keys}
    entry: dict[str, Any] = {"seeds": seeds, "n_seeds": len(seeds), "mean": mean, "std": std}
    if b2n:
        entry["hm_mean_of_seeds"] = mean["hm"]
        entry["hm"] = harmonic_mean(mean["base"], mean["novel"])
        entry["mean"]["hm"] = entry["hm"]
    return entry


def aggregate(
    protocol: str,
    runs: Mapping[str, Mapping[str, Mapping[Any, Mapping[str, float]]]],
    metrics: Sequence[str],
    average_over: Sequence[str] | None = None,
    roles: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Results from finished runs: ``runs[method][dataset][seed] = {metric: value}``.

    ``average_over`` names the datasets of the average row (default: all); ``roles`` tags datasets
    (``source`` / ``target``). Datasets without any finished seed are left out.
    """
    b2n = tuple(metrics) == B2N_METRICS
    out: dict[str, Any] = {"protocol": protocol, "metrics": list(metrics), "methods": {}, **dict(extra or {})}
    all_datasets: list[str] = []
    for method, per_dataset in runs.items():
        datasets = {d: _dataset_entry(s, metrics) for d, s in per_dataset.items() if s}
        for d in datasets:
            if roles and d in roles:
                datasets[d]["role"] = roles[d]
            if d not in all_datasets:
                all_datasets.append(d)
        names = [d for d in (average_over if average_over is not None else datasets) if d in datasets]
        entry: dict[str, Any] = {"datasets": datasets, "training": training_kind(method)}
        if names:
            avg: dict[str, Any] = {k: _mean([datasets[d]["mean"][k] for d in names]) for k in metrics}
            if b2n:
                avg["hm"] = harmonic_mean(avg["base"], avg["novel"])
                avg["hm_mean_of_datasets"] = _mean([datasets[d]["hm"] for d in names])
            avg["datasets"] = names
            avg["complete"] = len(names) == len(average_over or names)
            entry["average"] = avg
        out["methods"][method] = entry
    out["datasets"] = all_datasets
    return out


# ------------------------------------------------------------------------------------------------- costs
COST_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (key, heading, how runs are combined)
    ("wall_seconds", "wall s / run", "mean"),
    ("train_images_per_second", "train img/s", "mean"),
    ("peak_gpu_mib", "peak GPU MiB", "max"),
    ("peak_rss_mib", "peak RSS MiB", "max"),
    ("trainable_parameters", "trainable params", "max"),
)


def aggregate_costs(costs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """Per method and dataset, the measured cost of its runs: mean wall time and training throughput, peak
    memory (max over runs), trainable parameters and the total wall time (``runs[method][dataset]`` lists
    each run's ``cost`` entry of ``metrics.json``)."""
    out: dict[str, Any] = {}
    for method, per_dataset in costs.items():
        for dataset, entries in per_dataset.items():
            row: dict[str, Any] = {"runs": len(entries),
                                   "total_wall_seconds": sum(e.get("wall_seconds") or 0.0 for e in entries)}
            for key, _, how in COST_COLUMNS:
                values = [e[key] for e in entries if e.get(key) is not None]
                row[key] = (max(values) if how == "max" else _mean(values)) if values else None
            out.setdefault(method, {})[dataset] = row
    return out


def format_costs(results: Mapping[str, Any]) -> str:
    """The ``costs`` of ``results`` as a Markdown table (empty when there are none)."""
    costs = results.get("costs") or {}
    if not costs:
        return ""
    lines = ["| Method | Dataset | runs | " + " | ".join(h for _, h, _ in COST_COLUMNS) + " |",
             "| --- | --- |" + "|".join([" ---: "] * (len(COST_COLUMNS) + 1)) + "|"]
    for method, per_dataset in costs.items():
        for dataset, row in per_dataset.items():
            cells = [fmt_cost(row.get(key)) for key, _, _ in COST_COLUMNS]
            lines.append(f"| {method} | {_label(dataset)} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt_cost(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}"


def format_failures(results: Mapping[str, Any]) -> str:
    """The runs that failed for good, by name and cause (empty when none failed)."""
    failed = results.get("failed") or []
    if not failed:
        return ""
    lines = [f"FAILED ({len(failed)} run{'s' * (len(failed) != 1)}, not in the table):"]
    lines += [f"- {f['run']}: {f['cause']} (after {f['attempts']} attempt{'s' * (f['attempts'] != 1)})" for f in failed]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- tables
def _label(key: str) -> str:
    from .common import dataset_label

    return dataset_label(key)


def _cell(entry: Mapping[str, Any], key: str, with_std: bool) -> str:
    value = entry["mean"][key] if key != "hm" else entry["hm"]
    if with_std and entry.get("n_seeds", 1) > 1 and key in entry.get("std", {}) and key != "hm":
        return f"{value:.2f} ± {entry['std'][key]:.2f}"
    return f"{value:.2f}"


def _rows(results: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any], bool]]:
    """(dataset label, method, entry, is_average) in table order: average first, then datasets."""
    rows = []
    methods = results["methods"]
    if any("average" in m for m in methods.values()) and len(results.get("datasets", [])) > 1:
        for method, m in methods.items():
            if "average" in m:
                avg = m["average"]
                label = "Average" if avg.get("complete", True) else f"Average ({len(avg['datasets'])} datasets)"
                rows.append((label, method, {"mean": avg, "std": {}, "hm": avg.get("hm"), "n_seeds": 1}, True))
    for d in results.get("datasets", []):
        for method, m in methods.items():
            if d in m["datasets"]:
                e = m["datasets"][d]
                label = _label(d) + (" (source)" if e.get("role") == "source" else "")
                rows.append((label, method, e, False))
    return rows


def format_table(results: Mapping[str, Any], with_std: bool = False) -> str:
    """A Markdown table laid out like the paper's: Dataset | Base | Novel | HM for base-to-novel (with
    a Method column when there are several methods), Dataset | accuracy per method otherwise; the runs that
    failed for good are listed below the table."""
    return _format_accuracy(results, with_std) + (("\n" + format_failures(results)) if results.get("failed") else "")


def _format_accuracy(results: Mapping[str, Any], with_std: bool) -> str:
    methods = list(results["methods"])
    if not methods or not results.get("datasets"):
        return "No finished runs: nothing to tabulate.\n"
    if "curve" in results:
        from .curve import format_curve_table

        return format_curve_table(results["curve"], with_std, _label)
    b2n = tuple(results["metrics"]) == B2N_METRICS
    rows = _rows(results)
    lines: list[str] = []
    if b2n:
        multi = len(methods) > 1
        head = ["Dataset", *(["Method"] if multi else []), "Base", "Novel", "HM"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * (2 if multi else 1) + [" ---: "] * 3) + "|"]
        for label, method, e, _ in rows:
            cells = [label, *([method_label(results, method)] if multi else []), _cell(e, "base", with_std),
                     _cell(e, "novel", with_std),
                     f"{e['hm']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        notes = ["HM is the harmonic mean of the seed-averaged Base and Novel (the paper's convention)."]
        for method in methods:
            avg = results["methods"][method].get("average")
            if avg and len(avg["datasets"]) > 1:
                notes.append(f"{method}: mean of per-dataset HMs = {avg['hm_mean_of_datasets']:.2f}.")
        notes += _transductive_notes(results)
        return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
    by_dataset: dict[str, dict[str, str]] = {}
    for label, method, e, _ in rows:
        by_dataset.setdefault(label, {})[method] = _cell(e, "accuracy", with_std)
    lines += ["| Dataset | " + " | ".join(method_label(results, m) for m in methods) + " |",
              "| --- |" + "|".join([" ---: "] * len(methods)) + "|"]
    for label, cells in by_dataset.items():
        lines.append(f"| {label} | " + " | ".join(cells.get(m, "-") for m in methods) + " |")
    notes = _transductive_notes(results)
    return "\n".join(lines) + "\n" + ("\n" + " ".join(notes) + "\n" if notes else "")


def to_csv(results: Mapping[str, Any]) -> str:
    """One row per (method, dataset, seed), plus mean and std rows and the average rows (a few-shot curve:
    the same rows per shot count, with a leading ``shots`` column)."""
    if "by_shots" in results:
        from .curve import curve_csv

        return curve_csv(results, to_csv)
    b2n = tuple(results["metrics"]) == B2N_METRICS
    keys = ["base", "novel", "hm"] if b2n else list(results["metrics"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "dataset", "seed", *keys, *(["hm_mean_of_seeds"] if b2n else []), "training"])
    for method, m in results["methods"].items():
        kind = m.get("training") or training_kind(method)
        for d, e in m["datasets"].items():
            for seed, v in e["seeds"].items():
                w.writerow([method, d, seed, *(f"{v[k]:.4f}" for k in keys), *([""] if b2n else []), kind])
            w.writerow([method, d, "mean", *(f"{e['mean'][k]:.4f}" for k in keys),
                        *([f"{e['hm_mean_of_seeds']:.4f}"] if b2n else []), kind])
            w.writerow([method, d, "std", *(f"{e['std'][k]:.4f}" for k in keys), *([""] if b2n else []), kind])
        if "average" in m:
            avg = m["average"]
            w.writerow([method, "average", "mean", *(f"{avg[k]:.4f}" for k in keys),
                        *([f"{avg['hm_mean_of_datasets']:.4f}"] if b2n else []), kind])
    return buf.getvalue()


def plot_results(results: Mapping[str, Any], path: str | Path,
                 published: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> Path:
    """A bar chart per reported quantity (Base, Novel, HM; or accuracy), datasets on the x axis, ± std over
    seeds; ``published[method][dataset or "average"][metric]`` is drawn hatched beside ours (see
    :mod:`mmprompt.protocols.plots`). A few-shot curve (``results["curve"]``) is drawn against the shots."""
    from .plots import plot_bars, plot_curve

    if "curve" in results:
        return plot_curve(results["curve"], path, _label)
    return plot_bars(results, path, _label, published)


def write_results(results: Mapping[str, Any], output: str | Path, stem: str = "results",
                  published: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> dict[str, Path]:
    """``results.json``, ``results.md``, ``results.csv`` and ``results.png`` in ``output`` (atomic writes).

    The PNG is written only when there is something to draw (``results.png`` of an earlier sweep in the same
    folder is then removed, so the folder never shows a plot of other results); ``published`` adds the
    published numbers to the plot (``reproduce``)."""
    from ..fileio import atomic_write_bytes, atomic_write_json

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / f"{stem}.json", "md": output / f"{stem}.md", "csv": output / f"{stem}.csv",
             "png": output / f"{stem}.png"}
    atomic_write_json(paths["json"], json.loads(json.dumps(results)))
    title = f"# {results['protocol']}\n\n"
    costs = format_costs(results)
    cost_section = f"\n## {COST_HEADING}\n\n{costs}" if costs else ""
    atomic_write_bytes(paths["md"], (title + format_table(results, with_std=True) + cost_section).encode("utf-8"))
    atomic_write_bytes(paths["csv"], to_csv(results).encode("utf-8"))
    if results["methods"] and results.get("datasets"):
        tmp = paths["png"].with_name(f".{stem}.png.tmp")
        plot_results(results, tmp, published)
        tmp.replace(paths["png"])
    else:
        paths.pop("png").unlink(missing_ok=True)
    return paths
