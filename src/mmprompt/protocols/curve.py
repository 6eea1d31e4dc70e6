"""A few-shot sweep over several shot counts: one results document, one table, one curve (shots on x).

Each shot count is an ordinary few-shot sweep (its runs in ``<output>/<method>/<dataset>/few-shot-<K>shots/``);
the combined results keep each count's full results under ``by_shots`` and add ``curve``:
``{"shots", "seeds", "datasets", "methods": {method: {dataset | "average": {K: {"mean", "std", "n_seeds"}}}}}``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["combine_shots", "curve_csv", "format_curve_table"]


def combine_shots(per_shots: Mapping[int, Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One results document from the few-shot results of each shot count."""
    shots = sorted(int(k) for k in per_shots)
    methods: list[str] = []
    datasets: list[str] = []
    for k in shots:
        for m in per_shots[k]["methods"]:
            if m not in methods:
                methods.append(m)
        for d in per_shots[k].get("datasets", []):
            if d not in datasets:
                datasets.append(d)
    curve: dict[str, Any] = {"shots": shots, "seeds": [int(s) for s in seeds], "datasets": datasets, "methods": {}}
    costs: dict[str, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    transductive: set[str] = set()
    for m in methods:
        points: dict[str, dict[str, Any]] = {}
        for k in shots:
            entry = per_shots[k]["methods"].get(m)
            if entry is None:
                continue
            transductive |= {m} if entry.get("transductive") else set()
            for d, e in entry["datasets"].items():
                points.setdefault(d, {})[str(k)] = {"mean": e["mean"]["accuracy"], "std": e["std"]["accuracy"],
                                                    "n_seeds": e["n_seeds"]}
            if "average" in entry and len(datasets) > 1:
                points.setdefault("average", {})[str(k)] = {"mean": entry["average"]["accuracy"], "std": 0.0,
                                                            "n_seeds": 1, "complete": entry["average"]["complete"]}
        curve["methods"][m] = points
    for k in shots:
        for m, per_dataset in (per_shots[k].get("costs") or {}).items():
            for d, row in per_dataset.items():
                costs.setdefault(m, {})[f"{d} ({k} shots)"] = row
        failed += list(per_shots[k].get("failed", []))
    curve["transductive"] = sorted(transductive)
    largest = per_shots[shots[-1]]
    out: dict[str, Any] = {
        "protocol": "few-shot", "metrics": ["accuracy"], "shots": shots, "seeds": curve["seeds"],
        "datasets": datasets, "methods": {m: largest["methods"].get(m, {"datasets": {}}) for m in methods},
        "curve": curve, "by_shots": {str(k): dict(per_shots[k]) for k in shots}, "costs": costs,
    }
    if failed:
        out["failed"] = failed
    return out


def format_curve_table(curve: Mapping[str, Any], with_std: bool, label: Callable[[str], str]) -> str:
    """Dataset | Method | accuracy at each shot count (the average over datasets first)."""
    shots = [str(k) for k in curve["shots"]]
    panels = (["average"] if len(curve["datasets"]) > 1 else []) + list(curve["datasets"])
    lines = ["| Dataset | Method | " + " | ".join(f"{k} shot{'s' * (k != '1')}" for k in shots) + " |",
             "| --- | --- |" + "|".join([" ---: "] * len(shots)) + "|"]
    for panel in panels:
        for method, points in curve["methods"].items():
            if panel not in points:
                continue
            cells = []
            for k in shots:
                p = points[panel].get(k)
                if p is None:
                    cells.append("-")
                elif with_std and p.get("n_seeds", 1) > 1:
                    cells.append(f"{p['mean']:.2f} ± {p['std']:.2f}")
                else:
                    cells.append(f"{p['mean']:.2f}")
            name = "Average" if panel == "average" else label(panel)
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_csv(results: Mapping[str, Any], to_csv: Callable[[Mapping[str, Any]], str]) -> str:
    """Each shot count's CSV rows, with a leading ``shots`` column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header_written = False
    for k, res in results["by_shots"].items():
        rows = list(csv.reader(io.StringIO(to_csv(res))))
        if not header_written:
            w.writerow(["shots", *rows[0]])
            header_written = True
        for row in rows[1:]:
            w.writerow([k, *row])
    return buf.getvalue()
