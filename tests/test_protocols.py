"""Protocols: aggregation (HM both ways), base-to-novel end to end through the CLI, restarts, transfer."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from fake_datasets import expected_classnames
from mmprompt.cli import main
from mmprompt.clip import CLIP, get_config
from mmprompt.protocols import (
    aggregate,
    format_table,
    harmonic_mean,
    run_base2novel,
    run_few_shot,
    run_protocol,
    run_transfer,
)
from test_engine_support import make_data_root, one_thread, save_tiny_clip

FAST = ["optim.epochs=2", "method.depth=2", "data.num_workers=0"]


_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("protocols")
    root = make_data_root(base / "data", ("eurosat", "caltech101", "imagenet", "imagenet_a"))
    return root, save_tiny_clip(base / "tiny.pt")


# ------------------------------------------------------------------------------------------------ results
def test_aggregate_hm_both_ways() -> None:
    runs = {"m": {
        "d1": {1: {"base": 80.0, "novel": 60.0}, 2: {"base": 90.0, "novel": 70.0}},
        "d2": {1: {"base": 50.0, "novel": 50.0}, 2: {"base": 70.0, "novel": 30.0}},
    }}
    res = aggregate("base2novel", runs, ("base", "novel"), average_over=["d1", "d2"])
    d1 = res["methods"]["m"]["datasets"]["d1"]
    assert d1["mean"]["base"] == 85.0 and d1["mean"]["novel"] == 65.0
    assert d1["hm"] == pytest.approx(2 * 85 * 65 / 150)  # HM of the seed means (official)
    assert d1["hm_mean_of_seeds"] == pytest.approx((2 * 80 * 60 / 140 + 2 * 90 * 70 / 160) / 2)
    assert d1["std"]["base"] == pytest.approx(5.0)  # ddof=0
    assert d1["seeds"]["1"]["hm"] == pytest.approx(2 * 80 * 60 / 140)
    avg = res["methods"]["m"]["average"]
    assert avg["base"] == pytest.approx((85 + 60) / 2) and avg["novel"] == pytest.approx((65 + 40) / 2)
    assert avg["hm"] == pytest.approx(harmonic_mean(72.5, 52.5))
    d2_hm = harmonic_mean(60, 40)
    assert avg["hm_mean_of_datasets"] == pytest.approx((d1["hm"] + d2_hm) / 2)
    table = format_table(res)
    assert table.splitlines()[0] == "| Dataset | Base | Novel | HM |"
    assert "| Average | 72.50 | 52.50 |" in table and "mean of per-dataset HMs" in table
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_aggregate_accuracy_with_roles() -> None:
    runs = {"a": {"src": {1: {"accuracy": 70.0}}, "t1": {1: {"accuracy": 60.0}}, "t2": {1: {"accuracy": 40.0}}},
            "b": {"src": {1: {"accuracy": 71.0}}, "t1": {1: {"accuracy": 61.0}}, "t2": {1: {"accuracy": 41.0}}}}
    res = aggregate("cross-dataset", runs, ("accuracy",), average_over=["t1", "t2"],
                    roles={"src": "source", "t1": "target", "t2": "target"})
    assert res["methods"]["a"]["average"]["accuracy"] == 50.0
    table = format_table(res)
    assert table.splitlines()[0] == "| Dataset | a | b |"
    assert "| Average | 50.00 | 51.00 |" in table and "(source)" in table


# ------------------------------------------------------------------------------------------------ end to end
def _b2n_argv(root: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["benchmark", "base2novel", "--method", "maple", "--datasets", "eurosat", "--seeds", "1", "2",
            "--data-root", str(root), "--clip", str(weights), "--clip-activation", "quick_gelu",
            "--output", str(out), "--shots", "2", "--no-progress", "--set", *FAST, *extra]


def test_benchmark_base2novel_cli_end_to_end(env, tmp_path: Path) -> None:
    root, weights = env
    out = tmp_path / "sweep"
    assert main(_b2n_argv(root, weights, out)) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["methods"]["maple"]["datasets"]["eurosat"]
    assert sorted(entry["seeds"]) == ["1", "2"]
    for seed in ("1", "2"):
        metrics = json.loads((out / "maple" / "eurosat" / "base2novel-2shots" / f"seed{seed}" / "metrics.json").read_text())
        b, n = metrics["eval"]["base"]["accuracy"], metrics["eval"]["novel"]["accuracy"]
        assert metrics["eval"]["base"]["num_classes"] == 2 and metrics["eval"]["novel"]["num_classes"] == 2
        assert entry["seeds"][seed]["base"] == b and entry["seeds"][seed]["novel"] == n
        assert entry["seeds"][seed]["hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n))
    mb = (entry["seeds"]["1"]["base"] + entry["seeds"]["2"]["base"]) / 2
    mn = (entry["seeds"]["1"]["novel"] + entry["seeds"]["2"]["novel"]) / 2
    assert entry["mean"]["base"] == pytest.approx(mb) and entry["mean"]["novel"] == pytest.approx(mn)
    assert entry["hm"] == pytest.approx(2 * mb * mn / (mb + mn))
    for name in ("results.md", "results.csv", "results.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["seed"] for r in rows} >= {"1", "2", "mean", "std"}
    assert "| EuroSAT |" in (out / "results.md").read_text()

    # a restart skips finished runs: nothing is trained again, the results are the same
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert main(_b2n_argv(root, weights, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]


def test_sweep_stops_and_continues(env, tmp_path: Path) -> None:
    root, weights = env
    kwargs = dict(overrides=FAST, progress=False, shots=2, clip_activation="quick_gelu", device="cpu")
    partial = run_base2novel(["maple"], ["eurosat"], [1, 2], root, str(weights), tmp_path, stop_after_runs=1, **kwargs)
    assert sorted(partial["methods"]["maple"]["datasets"]["eurosat"]["seeds"]) == ["1"]
    # an interrupted run (no metrics.json) is redone, a finished one is kept
    full = run_base2novel(["maple"], ["eurosat"], [1, 2], root, str(weights), tmp_path, **kwargs)
    seeds = full["methods"]["maple"]["datasets"]["eurosat"]["seeds"]
    assert sorted(seeds) == ["1", "2"]
    assert seeds["1"] == partial["methods"]["maple"]["datasets"]["eurosat"]["seeds"]["1"]


def test_base2novel_with_a_callable_clip_and_zero_shot(env, tmp_path: Path) -> None:
    root, weights = env

    def loader():
        torch.manual_seed(0)
        return CLIP(get_config("tiny")), {"weights": "tiny-random", "note": "from a callable"}

    res = run_base2novel(["zeroshot", "maple"], ["eurosat", "caltech101"], [1], root, loader, tmp_path,
                         overrides=FAST, progress=False, shots=2, device="cpu")
    assert set(res["methods"]) == {"zeroshot", "maple"}
    zs = json.loads((tmp_path / "zeroshot" / "eurosat" / "base2novel-2shots" / "seed1" / "metrics.json").read_text())
    assert zs["train"] == {"epochs": 0}
    meta = json.loads((tmp_path / "maple" / "eurosat" / "base2novel-2shots" / "seed1" / "prompts.json").read_text())
    assert meta["clip"]["note"] == "from a callable"
    table = format_table(res)
    assert table.splitlines()[0] == "| Dataset | Method | Base | Novel | HM |"
    avg = res["methods"]["maple"]["average"]
    assert avg["datasets"] == ["eurosat", "caltech101"]
    assert avg["hm"] == pytest.approx(harmonic_mean(avg["base"], avg["novel"]))


def test_transfer_trains_once_and_uses_target_classes(env, tmp_path: Path) -> None:
    root, weights = env
    kwargs = dict(overrides=FAST, progress=False, shots=2, clip_activation="quick_gelu", device="cpu")
    xd = run_transfer("cross-dataset", ["maple"], ["eurosat"], [1], root, str(weights), tmp_path / "xd", **kwargs)
    assert xd["methods"]["maple"]["datasets"]["imagenet"]["role"] == "source"
    assert xd["methods"]["maple"]["average"]["datasets"] == ["eurosat"]
    source = tmp_path / "xd" / "maple" / "imagenet" / "source-2shots" / "seed1"
    state = source / "checkpoint" / "state.pt"
    stamp = state.stat().st_mtime_ns
    dg = run_transfer("domain-generalization", ["maple"], ["imagenet_a"], [1], root, str(weights), tmp_path / "dg",
                      source_runs=tmp_path / "xd", **kwargs)
    assert state.stat().st_mtime_ns == stamp  # the source prompts were reused, not trained again
    evaluated = json.loads((source / "eval" / "imagenet_a.json").read_text())
    assert evaluated["num_classes"] == len(expected_classnames("imagenet_a", 4))  # the -A subset's classes
    assert sorted(evaluated["per_class_accuracy"]) == sorted(expected_classnames("imagenet_a", 4))
    assert dg["methods"]["maple"]["average"]["accuracy"] == pytest.approx(evaluated["accuracy"])
    assert (tmp_path / "dg" / "results.json").is_file()
    assert not math.isnan(dg["methods"]["maple"]["datasets"]["imagenet"]["mean"]["accuracy"])
    assert os.path.isfile(tmp_path / "dg" / "results.md")


def test_run_protocol_few_shot_trains_on_all_classes(env, tmp_path: Path) -> None:
    root, weights = env
    kwargs = dict(overrides=FAST, progress=False, shots=2, clip_activation="quick_gelu", device="cpu")
    res = run_few_shot(["maple"], ["EuroSAT"], [1], root, str(weights), tmp_path, **kwargs)
    assert res["protocol"] == "few-shot" and res["seeds"] == [1] and res["shots"] == 2
    metrics = json.loads((tmp_path / "maple" / "eurosat" / "few-shot-2shots" / "seed1" / "metrics.json").read_text())
    assert metrics["eval"]["test"]["num_classes"] == len(expected_classnames("eurosat", 4))
    assert res["methods"]["maple"]["datasets"]["eurosat"]["seeds"]["1"]["accuracy"] == pytest.approx(
        metrics["eval"]["test"]["accuracy"])
    with pytest.raises(ValueError, match="unknown protocol 'base2new'; expected base2novel, few-shot, cross-dataset"):
        run_protocol("base2new", ["maple"], ["eurosat"], [1], root, str(weights), tmp_path / "x", **kwargs)


def test_method_variants_run_apart_with_their_own_presets(env, tmp_path: Path) -> None:
    """DePT over CoOp and over MaPLe in one sweep: two presets, two run folders, two rows (not one "dept")."""
    root, weights = env
    overrides = ["dept:optim.epochs=1", "data.num_workers=0", "dept_maple:method.base_options.depth=2"]
    res = run_base2novel(["dept_coop", "DePT-MaPLe"], ["eurosat"], [1], root, str(weights), tmp_path,
                         overrides=overrides, progress=False, shots=2, clip_activation="quick_gelu", device="cpu")
    assert list(res["methods"]) == ["dept_coop", "dept_maple"]
    for variant, base in (("dept_coop", "coop"), ("dept_maple", "maple")):
        run = tmp_path / variant / "eurosat" / "base2novel-2shots" / "seed1"
        config = json.loads((run / "prompts.json").read_text())["config"]
        assert config["base"] == base
        assert json.loads((run / "metrics.json").read_text())["train"]["epochs"] == 1
    with pytest.raises(ValueError, match="names the method 'dept_coop', which is not in this sweep"):
        run_base2novel(["dept_maple"], ["eurosat"], [1], root, str(weights), tmp_path / "x",
                       overrides=["dept_coop:optim.epochs=1"], progress=False, device="cpu")


def test_sequential_launcher_retries_only_transient_failures(env, tmp_path: Path, capsys, monkeypatch) -> None:
    """A run that fails for a deterministic cause (its dataset folder is empty) is tried once; a transient
    failure (an I/O error) is tried again. Each failure is named under the table, in results.json and in
    the exit code; the other runs complete."""
    import errno
    import shutil

    import mmprompt.protocols.launch as launch_mod

    src, weights = env
    root = tmp_path / "data"
    shutil.copytree(src, root)
    (root / "stanford_cars").mkdir()  # present (the pre-flight check passes) but without its files
    real, calls = launch_mod.execute, []

    def flaky(spec, *a, **k):
        calls.append(spec.dataset)
        if spec.dataset == "eurosat" and calls.count("eurosat") == 1:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real(spec, *a, **k)

    monkeypatch.setattr(launch_mod, "execute", flaky)
    out = tmp_path / "sweep"
    argv = ["benchmark", "base2novel", "--method", "zeroshot", "--datasets", "eurosat", "stanford_cars", "--seeds", "1",
            "--data-root", str(root), "--clip", str(weights), "--clip-activation", "quick_gelu", "--output", str(out),
            "--shots", "2", "--no-progress", "--max-retries", "2", "--set", "data.num_workers=0"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]["zeroshot"]["datasets"]) == ["eurosat"]
    (failed,) = results["failed"]
    assert failed["run"] == "zeroshot on stanford_cars, seed 1 (base2novel)" and failed["attempts"] == 1
    assert calls == ["eurosat", "eurosat", "stanford_cars"]  # the transient error retried, the other not
    assert f"- {failed['run']}: {failed['cause']} (after 1 attempt" in printed
    log = (out / "zeroshot" / "stanford_cars" / "base2novel-2shots" / "seed1" / "error.log").read_text()
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("==")] == ["== attempt 1"]
    assert not (out / "zeroshot" / "eurosat" / "base2novel-2shots" / "seed1" / "error.log").exists()
    cost = json.loads((out / "zeroshot" / "eurosat" / "base2novel-2shots" / "seed1" / "metrics.json").read_text())["cost"]
    assert cost["trainable_parameters"] == 0 and cost["train_images"] == 0 and cost["wall_seconds"] > 0
    assert results["costs"]["zeroshot"]["eurosat"]["runs"] == 1


def test_run_settings_apply_to_the_run_only() -> None:
    from mmprompt.protocols.launch import LaunchOptions
    from mmprompt.protocols.plan import run_settings

    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with run_settings(threads=2, deterministic=True):
        assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    for bad in ({"launcher": "slurm"}, {"max_retries": -1}, {"cpus_per_run": 0}, {"gpus_per_run": -0.5}):
        with pytest.raises(ValueError):
            LaunchOptions(**bad)
