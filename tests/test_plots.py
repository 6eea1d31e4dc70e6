"""The plots beside results.md (issue 21, point 6): error bars, distinct colour-blind-safe colours, the legend
outside the bars, published numbers hatched beside ours, transductive runs marked, the few-shot curve."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from mmprompt.protocols.curve import combine_shots
from mmprompt.protocols.plots import PALETTE, bars_figure, curve_figure, method_styles
from mmprompt.protocols.results import aggregate, format_table, to_csv, write_results

METHODS = ["zeroshot", "coop", "cocoop", "vpt", "language_only", "ivlp", "maple", "kgcoop", "promptsrc", "prograd",
           "tcp", "dept", "mma"]


def _b2n(methods: list[str], datasets: tuple[str, ...] = ("eurosat", "dtd")) -> dict:
    runs = {m: {d: {s: {"base": 60.0 + i + s, "novel": 50.0 + i - s} for s in (1, 2, 3)} for d in datasets}
            for i, m in enumerate(methods)}
    return aggregate("base2novel", runs, ("base", "novel"), extra={"seeds": [1, 2, 3]})


@pytest.mark.parametrize("n", [3, 13, 17, 18, 40, 200])
def test_every_method_gets_its_own_look(n: int) -> None:
    styles = method_styles([f"m{i}" for i in range(n)])
    looks = {(s["color"], s["hatch"]) for s in styles.values()}
    assert len(looks) == n
    first = [styles[f"m{i}"]["color"] for i in range(min(n, len(PALETTE)))]
    assert len(set(first)) == len(first)  # plain distinct colours as long as the palette lasts
    assert all(styles[f"m{i}"]["hatch"] == "" for i in range(min(n, len(PALETTE))))
    assert styles["m0"]["color"] == "#0072B2"  # Okabe-Ito blue first


def test_bars_have_seed_error_bars_and_the_legend_is_outside() -> None:
    results = _b2n(METHODS)
    results["methods"]["tcp"]["transductive"] = True
    fig = bars_figure(results, str)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for ax in axes:
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert len(bars) == len(METHODS)
        assert len({b.patches[0].get_facecolor() for b in bars}) == len(METHODS)  # 13 distinct colours
        errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(errorbars) == len(METHODS)  # std over 3 seeds per dataset
        dashed = [b for b in bars if b.patches[0].get_linestyle() == "--"]
        assert len(dashed) == 1  # tcp, marked transductive
    [legend] = fig.legends
    box = legend.get_window_extent(renderer)
    assert all(box.x0 >= ax.get_window_extent(renderer).x1 for ax in axes)  # never over a bar
    texts = [t.get_text() for t in legend.get_texts()]
    assert "tcp (transductive)" in texts and "error bars: ± std over seeds" in texts


def test_published_numbers_are_hatched_beside_ours() -> None:
    results = _b2n(["coop", "maple"])
    published = {"maple": {"eurosat": {"base": 94.07, "novel": 73.23, "hm": 82.35}, "imagenet": {"base": 76.66}},
                 "coop": {}}
    fig = bars_figure(results, str, published)
    ax = fig.axes[0]  # Base
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3  # coop, maple, maple's published
    hatched = [b for b in bars if b.patches[0].get_hatch() == "////"]
    assert len(hatched) == 1
    heights = [p.get_height() for p in hatched[0].patches]
    xs_ours = [p.get_x() for p in bars[1].patches]
    xs_pub = [p.get_x() for p in hatched[0].patches]
    columns = ["average", "eurosat", "dtd"]
    assert heights[columns.index("eurosat")] == pytest.approx(94.07)
    assert all(x_pub > x_ours for x_pub, x_ours in zip(xs_pub, xs_ours, strict=True))  # right beside ours
    assert "published" in [t.get_text() for t in fig.legends[0].get_texts()]


def _curve() -> dict:
    per = {}
    for k in (1, 2, 4, 8, 16):
        runs = {m: {d: {s: {"accuracy": 40.0 + k + i + s} for s in (1, 2, 3)} for d in ("eurosat", "dtd")}
                for i, m in enumerate(["coop", "maple"])}
        per[k] = aggregate("few-shot", runs, ("accuracy",), extra={"seeds": [1, 2, 3], "shots": k})
    return combine_shots(per, [1, 2, 3])


def test_few_shot_sweep_gives_one_table_and_one_curve(tmp_path: Path) -> None:
    results = _curve()
    table = format_table(results, with_std=True)
    assert table.splitlines()[0] == "| Dataset | Method | 1 shot | 2 shots | 4 shots | 8 shots | 16 shots |"
    assert "| EuroSAT | maple | 44.00 ± 0.82 | 45.00 ± 0.82 | 47.00 ± 0.82 | 51.00 ± 0.82 | 59.00 ± 0.82 |" in table
    assert "| Average | coop | 43.00 | 44.00 | 46.00 | 50.00 | 58.00 |" in table
    csv_rows = to_csv(results).splitlines()
    assert csv_rows[0] == "shots,method,dataset,seed,accuracy,training" and csv_rows[1].startswith("1,coop,eurosat,1,")
    fig = curve_figure(results["curve"], str)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert [ax.get_title() for ax in panels] == ["Average", "eurosat", "dtd"]
    line = panels[1].lines[0]
    assert list(line.get_xdata()) == [1, 2, 4, 8, 16] and panels[1].get_xscale() == "log"
    paths = write_results(results, tmp_path)
    assert sorted(paths) == ["csv", "json", "md", "png"] and paths["png"].stat().st_size > 0


def test_a_sweep_without_finished_runs_has_no_empty_header_and_no_stale_plot(tmp_path: Path) -> None:
    write_results(_b2n(["coop"]), tmp_path)
    assert (tmp_path / "results.png").is_file()
    empty = aggregate("cross-dataset", {}, ("accuracy",))
    empty["failed"] = [{"run": "maple/imagenet/seed1", "cause": "DatasetNotFoundError: imagenet", "attempts": 1}]
    table = format_table(empty)
    assert "| Dataset |  |" not in table and table.startswith("No finished runs")
    paths = write_results(empty, tmp_path)
    assert "png" not in paths and not (tmp_path / "results.png").exists()
