"""The plots beside ``results.md``: bars per dataset (error bars from the seeds, published numbers hatched
beside ours) and the few-shot curve (shots on x).

Colours come from colour-blind-safe palettes (Okabe & Ito's 8, then Paul Tol's muted 9): 17 methods get 17
distinct colours; beyond that a colour comes back with a different fill pattern, so any number of methods
stays distinguishable. The legend sits outside the axes, never over a bar. Runs that read the test images
while adapting (``transductive``, in a method's results entry or ``results["transductive"]``) are drawn
with a dashed black outline and marked in the legend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PALETTE", "bars_figure", "curve_figure", "method_styles", "plot_bars", "plot_curve"]

PALETTE: tuple[str, ...] = (
    # Okabe & Ito (2008), without black (error bars and outlines are drawn in black)
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999",
    # Paul Tol's "muted" scheme
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499",
)
"""Colour-blind-safe colours, in the order methods receive them."""
FILLS: tuple[str, ...] = ("", "..", "oo", "++", "**")
"""Fill patterns that tell apart methods beyond the palette (the published bars use '////')."""
PUBLISHED_HATCH = "////"


def method_styles(methods: Sequence[str]) -> dict[str, dict[str, str]]:
    """A distinct (colour, fill pattern) for each method, in order: the first 17 are plain colours, later
    ones repeat a colour with a pattern (denser on each round), so no two methods look alike."""
    out = {}
    for i, m in enumerate(methods):
        level = i // len(PALETTE)
        hatch = "" if level == 0 else FILLS[1 + (level - 1) % (len(FILLS) - 1)] * (1 + (level - 1) // (len(FILLS) - 1))
        out[m] = {"color": PALETTE[i % len(PALETTE)], "hatch": hatch}
    return out


def transductive_methods(results: Mapping[str, Any]) -> set[str]:
    """The methods whose runs are transductive (a ``transductive`` flag on the method entry or a list)."""
    listed = results.get("transductive") or []
    flagged = {m for m, e in results.get("methods", {}).items()
               if isinstance(e, Mapping) and (e.get("transductive") or e.get("training") == "transductive")}
    return set(listed if isinstance(listed, (list, tuple, set)) else []) | flagged


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _metric_label(key: str) -> str:
    return {"hm": "HM", "accuracy": "Accuracy"}.get(key, key.capitalize()) + " (%)"


def _value(entry: Mapping[str, Any] | None, key: str) -> tuple[float, float]:
    """(mean, std over seeds) of ``key`` in a dataset entry; NaN when absent."""
    if not entry:
        return float("nan"), 0.0
    mean = entry.get("hm") if key == "hm" and "hm" in entry else entry.get("mean", {}).get(key, float("nan"))
    std = entry.get("std", {}).get(key, 0.0) if entry.get("n_seeds", 1) > 1 else 0.0
    return float(mean if mean is not None else float("nan")), float(std or 0.0)


def plot_bars(results: Mapping[str, Any], path: str | Path, label: Any,
              published: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> Path:
    """One bar chart per reported quantity (Base, Novel, HM; or accuracy), datasets on the x axis, written
    to ``path`` (PNG). ``label(dataset_key)`` names a dataset. ``published[method][dataset or "average"]
    [metric]`` adds the published number as a hatched bar right of ours (same colour)."""
    return _save(bars_figure(results, label, published), path)


def _save(fig: Any, path: str | Path) -> Path:
    import io

    from ..fileio import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()  # rendered first, then written atomically: never a half-written PNG
    fig.savefig(buf, dpi=100, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def bars_figure(results: Mapping[str, Any], label: Any,
                published: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> Any:
    """The figure of :func:`plot_bars` (for tests and notebooks)."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    b2n = tuple(results["metrics"]) == ("base", "novel")
    keys = ["base", "novel", "hm"] if b2n else list(results["metrics"])
    methods = list(results["methods"])
    styles = method_styles(methods)
    transductive = transductive_methods(results)
    datasets = list(results.get("datasets", []))
    has_avg = any("average" in m for m in results["methods"].values()) and len(datasets) > 1
    columns = (["average"] if has_avg else []) + datasets
    published = {m: {c: v[c] for c in columns if c in v} for m, v in (published or {}).items() if m in methods}
    published = {m: v for m, v in published.items() if v}  # only methods with a published number to draw
    bars = [(m, False) for m in methods] + [(m, True) for m in methods if m in published]
    bars.sort(key=lambda b: (methods.index(b[0]), b[1]))  # ours, then its published number
    width = 0.8 / max(1, len(bars))
    fig_w = min(40.0, max(7.0, 0.35 * len(columns) * len(bars) + 3.5))
    fig, axes = plt.subplots(len(keys), 1, figsize=(fig_w, 2.9 * len(keys) + 0.6), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for i, (method, is_pub) in enumerate(bars):
            m = results["methods"][method]
            values, errors = [], []
            for c in columns:
                if is_pub:
                    v = published[method].get(c, {}).get(key)
                    values.append(float("nan") if v is None else float(v))
                    errors.append(0.0)
                elif c == "average":  # no seed spread for an average over datasets: no error bar
                    values.append(float(m.get("average", {}).get(key, float("nan"))))
                    errors.append(float("nan"))
                else:
                    v, s = _value(m["datasets"].get(c), key)
                    values.append(v)
                    errors.append(s)
            xs = [x + (i - (len(bars) - 1) / 2) * width for x in range(len(columns))]
            style = styles[method]
            kw: dict[str, Any] = {"color": style["color"], "edgecolor": "black", "linewidth": 0.4}
            if is_pub:
                kw.update(color="white", edgecolor=style["color"], hatch=PUBLISHED_HATCH, linewidth=1.0)
            else:
                kw["hatch"] = style["hatch"] or None
                if method in transductive:
                    kw.update(edgecolor="black", linewidth=1.4, linestyle="--")
                if any(e > 0 for e in errors if not math.isnan(e)):
                    kw.update(yerr=errors, capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "black"})
            ax.bar(xs, values, width, **kw)
            if len(columns) * len(bars) <= 24:  # few bars: each value is readable above its bar (and error bar)
                for x, v, e in zip(xs, values, errors, strict=True):
                    if not math.isnan(v):
                        top = v + (0.0 if math.isnan(e) else e)
                        ax.annotate(f"{v:.1f}", (x, top), xytext=(0, 2), textcoords="offset points", ha="center",
                                    va="bottom", fontsize=7)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(["Average" if c == "average" else label(c) for c in columns], rotation=30, ha="right")
        ax.set_ylabel(_metric_label(key))
        ax.set_ylim(0, 105)
        ax.set_yticks(range(0, 101, 20))
        ax.set_xlim(-0.6, len(columns) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(facecolor=styles[m]["color"], edgecolor="black", linewidth=0.4, hatch=styles[m]["hatch"] or None,
                     label=m + (" (transductive)" if m in transductive else "")) for m in methods]
    if published:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=PUBLISHED_HATCH, label="published"))
    if transductive:
        handles.append(Patch(facecolor="white", edgecolor="black", linestyle="--", linewidth=1.4,
                             label="dashed: transductive"))
    if any(e.get("n_seeds", 1) > 1 for m in results["methods"].values() for e in m["datasets"].values()):
        handles.append(Patch(facecolor="none", edgecolor="none", label="error bars: ± std over seeds"))
    title = str(results["protocol"])
    seeds = list(results.get("seeds") or [])
    if seeds:
        title += f" (seed{'s' * (len(seeds) > 1)} {' '.join(map(str, seeds))})"
    axes[0, 0].set_title(title)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def plot_curve(curve: Mapping[str, Any], path: str | Path, label: Any) -> Path:
    """:func:`curve_figure` written to ``path`` (PNG)."""
    return _save(curve_figure(curve, label), path)


def curve_figure(curve: Mapping[str, Any], label: Any) -> Any:
    """Accuracy against shots per class (log2 axis), one line per method with ± std over seeds; one panel
    for the average over datasets (when there are several) and one per dataset.

    ``curve``: ``{"shots": [...], "methods": {method: {dataset or "average": {shots: {"mean", "std"}}}}}``.
    """
    plt = _pyplot()
    shots = [int(k) for k in curve["shots"]]
    methods = list(curve["methods"])
    styles = method_styles(methods)
    transductive = set(curve.get("transductive") or [])
    panels = list(curve.get("datasets", []))
    if len(panels) > 1:
        panels = ["average", *panels]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.8, 3.0 * rows + 0.4), squeeze=False)
    markers = "osD^vP*Xh<>p"
    for n, panel in enumerate(panels):
        ax = axes[n // cols, n % cols]
        for i, method in enumerate(methods):
            points = curve["methods"][method].get(panel, {})
            xs = [k for k in shots if str(k) in points]
            if not xs:
                continue
            ys = [points[str(k)]["mean"] for k in xs]
            es = [points[str(k)].get("std", 0.0) for k in xs]
            ax.errorbar(xs, ys, yerr=es if any(es) else None, color=styles[method]["color"],
                        marker=markers[i % len(markers)], markersize=4, capsize=2, linewidth=1.4,
                        linestyle="--" if method in transductive else "-",
                        label=method + (" (transductive)" if method in transductive else ""))
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
        ax.set_title("Average" if panel == "average" else label(panel), fontsize="medium")
        ax.set_xlabel("shots per class")
        ax.set_ylabel("Accuracy (%)")
        ax.grid(alpha=0.3)
    for n in range(len(panels), rows * cols):
        axes[n // cols, n % cols].axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle("few-shot: accuracy against shots" + (" (± std over seeds)" if curve.get("seeds", [0, 0])[1:]
                                                       else ""))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    return fig
