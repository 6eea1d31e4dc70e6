"""Published numbers (package data ``assets/published_results.json``) and the report that puts ours beside them.

Every published entry carries its source and a status: ``verified`` (checked against an official
repository at a commit), ``paper`` (transcribed from the paper's table named in the source) or ``recalled``
(written from memory of the named paper: not an exact target).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from .results import (
    B2N_METRICS,
    COST_COLUMNS,
    TRANSDUCTIVE,
    fmt_cost,
    format_failures,
    training_kind,
    transductive_note,
)

__all__ = ["comparison_rows", "format_report", "published_results", "published_table"]

PUBLISHED_FILE = "published_results.json"


@lru_cache(maxsize=1)
def _load() -> str:
    return resources.files("mmprompt").joinpath("assets", PUBLISHED_FILE).read_text(encoding="utf-8")


def published_results() -> dict[str, Any]:
    """The shipped published numbers (a fresh copy): ``{protocol: {method: entry}, "compute": ...}``."""
    return json.loads(_load())


TRANSDUCTIVE_ENTRIES: dict[str, str] = {"cross-dataset": "cross_dataset_transductive"}
"""Protocol -> the key under a transductive method's base-to-novel entry that holds its published numbers for
that protocol (PromptKD's cross-dataset: trained on each target's unlabelled images with the ImageNet teacher)."""


def published_table(protocol: str, published: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{method: entry}`` of ``protocol``: the protocol's own entries, plus (cross-dataset) the transductive
    methods' entries kept under their base-to-novel entry, in the same layout and marked
    ``training: transductive``."""
    data = published if published is not None else published_results()
    table = dict(data.get(protocol, {}))
    key = TRANSDUCTIVE_ENTRIES.get(protocol)
    for method, entry in (data.get("base2novel", {}) if key else {}).items():
        nested = entry.get(key) if isinstance(entry, Mapping) else None
        if not isinstance(nested, Mapping) or method in table:
            continue
        status, source = nested.get("status", ""), nested.get("source", "")
        table[method] = {"label": entry.get("label", method), "training": TRANSDUCTIVE, "note": nested.get("note", ""),
                         "average": {**nested.get("average", {}), "status": status, "source": source},
                         "datasets": dict(nested.get("datasets", {})), "datasets_status": status,
                         "datasets_source": source}
    return table


def _metrics(protocol: str) -> tuple[str, ...]:
    return (*B2N_METRICS, "hm") if protocol == "base2novel" else ("accuracy",)


def _ours(results: Mapping[str, Any] | None, method: str, dataset: str | None) -> dict[str, float] | None:
    """Our value of each metric for ``dataset`` (None: the average row), or None when not run."""
    if not results or method not in results.get("methods", {}):
        return None
    entry = results["methods"][method]
    if dataset is None:
        avg = entry.get("average")
        return None if avg is None else {k: avg[k] for k in _metrics(results["protocol"]) if k in avg}
    d = entry["datasets"].get(dataset)
    if d is None:
        return None
    out = dict(d["mean"])
    if "hm" in d:
        out["hm"] = d["hm"]
    return out


def comparison_rows(
    protocol: str, methods: Sequence[str], results: Mapping[str, Any] | None, paper_datasets: Sequence[str],
    published: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, dataset) with our numbers, the published ones, the differences and the costs.

    Rows: the average (ours is comparable only when it covers ``paper_datasets``), then every dataset we ran
    or that has a published number.
    """
    table = published_table(protocol, published)
    keys = _metrics(protocol)
    rows: list[dict[str, Any]] = []
    for method in methods:
        pub = table.get(method, {})
        ran = list(results["methods"][method]["datasets"]) if results and method in results.get("methods", {}) else []
        datasets = ran + [d for d in pub.get("datasets", {}) if d not in ran]
        avg_ours = _ours(results, method, None)
        covered = results["methods"][method].get("average", {}).get("datasets", []) if avg_ours else []
        comparable = set(paper_datasets) <= set(covered)
        entries: list[tuple[str, dict | None, dict | None, str, str, bool]] = []
        if pub.get("average") or avg_ours:
            entries.append(("Average", avg_ours, pub.get("average"), pub.get("average", {}).get("status", ""),
                            pub.get("average", {}).get("source", ""), comparable))
        for d in datasets:
            entries.append((d, _ours(results, method, d), pub.get("datasets", {}).get(d),
                            pub.get("datasets_status", ""), pub.get("datasets_source", ""), True))
        for dataset, ours, theirs, status, source, comparable_row in entries:
            row: dict[str, Any] = {"method": method, "dataset": dataset, "status": status if theirs else "",
                                   "source": source if theirs else "", "comparable": comparable_row,
                                   "training": pub.get("training") or training_kind(method)}
            if dataset == "Average":
                n = len(covered)
                row["over"] = f"ours over {n} dataset{'s' * (n != 1)}" if ours and not comparable_row else ""
            for k in keys:
                o = ours.get(k) if ours else None
                p = theirs.get(k) if theirs else None
                row[k] = o
                row[f"published_{k}"] = p
                row[f"diff_{k}"] = o - p if o is not None and p is not None and comparable_row else None
            cost = (results or {}).get("costs", {}).get(method, {}).get(dataset) if dataset != "Average" else None
            for ck, _, _ in COST_COLUMNS:
                row[ck] = cost.get(ck) if cost else None
            rows.append(row)
    return rows


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _label(key: str) -> str:
    from .common import dataset_label

    return "Average" if key == "Average" else dataset_label(key)


def format_report(sections: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """The Markdown report: per protocol, ours | published | difference per metric, the status of the published
    number, and the measured cost of our runs. ``sections``: ``{"protocol", "rows", "results", "note"}``."""
    lines = ["# mmprompt reproduce: our numbers beside the published ones", ""]
    lines += [f"{n}" for n in notes]
    if notes:
        lines.append("")
    lines += ["Differences are ours minus published, in accuracy points. Status of the published number: "
              "verified (checked against the official repository named in the source), paper (transcribed from "
              "the paper's table named in the source), recalled (from memory of the named paper, not an exact "
              "target); each source is in src/mmprompt/assets/published_results.json. An average over fewer datasets than the paper's "
              "is not compared (-).", ""]
    for sec in sections:
        protocol, rows = sec["protocol"], sec["rows"]
        lines += [f"## {protocol}", ""]
        if sec.get("note"):
            lines += [sec["note"], ""]
        if not rows:
            lines += ["(nothing to report)", ""]
            continue
        keys = _metrics(protocol)
        head = ["Method", "Dataset"]
        for k in keys:
            name = {"hm": "HM", "accuracy": "Acc"}.get(k, k.capitalize())
            head += [name, "published", "diff"]
        head += ["status", *[h for _, h, _ in COST_COLUMNS]]
        lines += ["| " + " | ".join(head) + " |", "| --- | --- |" + "|".join([" ---: "] * (len(head) - 2)) + "|"]
        for r in rows:
            label = _label(r["dataset"]) + (f" ({r['over']})" if r.get("over") else "")
            method = r["method"] + (f" ({TRANSDUCTIVE})" if r.get("training") == TRANSDUCTIVE else "")
            cells = [method, label]
            for k in keys:
                cells += [_num(r[k]), _num(r[f"published_{k}"]), _num(r[f"diff_{k}"], signed=True)]
            cells += [r["status"] or "-", *[fmt_cost(r.get(ck)) for ck, _, _ in COST_COLUMNS]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        transductive = sorted({r["method"] for r in rows if r.get("training") == TRANSDUCTIVE})
        if transductive:
            lines += [f"{', '.join(transductive)}: {transductive_note(protocol)}", ""]
        failures = format_failures(sec.get("results") or {})
        if failures:
            lines += [failures]
        sources = sorted({r["source"] for r in rows if r["source"]})
        if sources:
            lines += ["Sources: " + "; ".join(sources) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"
