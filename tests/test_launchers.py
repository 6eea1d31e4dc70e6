"""Launchers on a real local Ray cluster (2 CPUs) and the demo world: the same table as the sequential launcher,
a killed worker retried, a failing run reported while the others complete."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mmprompt.cli import main
from mmprompt.demo.protocol import COMMON_OVERRIDES
from mmprompt.demo.world import generate_demo_dataset
from mmprompt.protocols import format_table, run_base2novel
from mmprompt.protocols.base2novel import plan_base2novel
from mmprompt.protocols.common import SweepOptions
from mmprompt.protocols.launch import LaunchOptions
from mmprompt.protocols.ray_launcher import WORKER_FILE, staging_folder
from mmprompt.protocols.results import COST_HEADING

ray = pytest.importorskip("ray")

METHODS = ["zeroshot", "coop", "maple"]
# the demo recipe (MaPLe's depth scaled to the 4-layer demo CLIP) with 2 epochs and 4 shots: seconds per run
FAST = [*COMMON_OVERRIDES, "maple:method.depth=3", "optim.epochs=2"]


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A local Ray cluster with 2 CPU workers, shared by the tests of this module."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("launch") / "data"
    generate_demo_dataset(root)
    return root


def _argv(root: Path, out: Path, *extra: str, methods: list[str] = METHODS, datasets: tuple[str, ...] = ("mmprompt_demo",),
          overrides: list[str] = FAST) -> list[str]:
    return ["benchmark", "base2novel", "--method", *methods, "--datasets", *datasets, "--seeds", "1", "2",
            "--data-root", str(root), "--clip", "demo", "--device", "cpu", "--shots", "4", "--no-progress",
            "--output", str(out), "--set", *overrides, *extra]


def _cli(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


def _without_costs(folder: Path) -> tuple[dict[str, Any], str, bytes]:
    """results.json without the measured costs, results.md before the cost section, results.csv."""
    results = json.loads((folder / "results.json").read_text())
    costs = results.pop("costs")
    assert costs  # every run's measured cost is aggregated
    md = (folder / "results.md").read_text()
    assert f"## {COST_HEADING}" in md
    return results, md.split(f"## {COST_HEADING}")[0], (folder / "results.csv").read_bytes()


@pytest.fixture(scope="module")
def sequential(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    code, _ = _cli(_argv(demo_root, out))
    assert code == 0
    return out


def test_ray_launcher_gives_the_sequential_table(cluster: Any, sequential: Path, demo_root: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "ray"
    code, printed = _cli(_argv(demo_root, out, "--launcher", "ray", "--cpus-per-run", "1"))
    assert code == 0
    seq_json, seq_md, seq_csv = _without_costs(sequential)
    ray_json, ray_md, ray_csv = _without_costs(out)
    assert ray_json == seq_json  # every accuracy, to the last digit
    assert ray_md == seq_md and ray_csv == seq_csv
    assert (out / "results.png").read_bytes() == (sequential / "results.png").read_bytes()
    assert set(seq_json["methods"]) == set(METHODS)
    assert format_table(seq_json, with_std=True) in printed
    maple = out / "maple" / "mmprompt_demo" / "base2novel-4shots" / "seed2"
    for name in ("config.yaml", "metrics.json", "prompts.safetensors", "log.jsonl", "run.log"):
        assert (maple / name).is_file(), name
    assert not (maple / "checkpoint").exists()  # the checkpoint stays in the task's staging folder
    cost = json.loads((maple / "metrics.json").read_text())["cost"]
    assert cost["trainable_parameters"] > 0 and cost["train_images_per_second"] > 0
    assert cost["train_images"] == 13 * 4 * 2  # 13 base classes x 4 shots, 2 epochs of full batches of 4
    assert cost["peak_rss_mib"] > 0 and cost["torch_threads"] == 1
    assert "maple on mmprompt_demo, seed 2" in (maple / "run.log").read_text()
    # the same command again: every run is finished, nothing runs, the same results
    before = (maple / "metrics.json").stat().st_mtime_ns
    assert _cli(_argv(demo_root, out, "--launcher", "ray"))[0] == 0
    assert (maple / "metrics.json").stat().st_mtime_ns == before
    assert _without_costs(out)[0] == seq_json


def _kill_when_training(stage: Path, done: threading.Event, killed: list[int]) -> None:
    """SIGKILL the worker process of the run staged in ``stage`` once it has finished an epoch."""
    while not done.is_set():
        if (stage / "checkpoint" / "state.pt").is_file() and (stage / WORKER_FILE).is_file():
            pid = json.loads((stage / WORKER_FILE).read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_table_is_unchanged(cluster: Any, demo_root: Path, tmp_path: Path) -> None:
    overrides = [*COMMON_OVERRIDES, "maple:method.depth=3", "optim.epochs=4"]
    common = dict(overrides=overrides, shots=4, device="cpu", progress=False)
    seq = run_base2novel(["maple"], ["mmprompt_demo"], [1], demo_root, "demo", tmp_path / "seq", **common)
    staging = tmp_path / "staging"
    out = tmp_path / "ray"
    run = out / "maple" / "mmprompt_demo" / "base2novel-4shots" / "seed1"
    spec = plan_base2novel(SweepOptions(["maple"], ["mmprompt_demo"], [1], demo_root, "demo", out, {}, overrides,
                                        4, None, "cpu", False))[0]
    stage = staging_folder(str(staging), spec.folder, spec.config)
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_when_training, args=(stage, done, killed), daemon=True)
    watcher.start()
    try:
        launch = LaunchOptions(launcher="ray", max_retries=1, staging_dir=str(staging), progress=False)
        res = run_base2novel(["maple"], ["mmprompt_demo"], [1], demo_root, "demo", out, launch=launch, **common)
    finally:
        done.set()
        watcher.join()
    assert killed, "the worker was not killed while training"
    assert "failed" not in res
    res.pop("costs"), seq.pop("costs")
    assert res == seq
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] >= 1  # the retry resumed from the killed attempt's checkpoint
    assert not (run / "error.log").exists()  # cleared once the run succeeded


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_complete(cluster: Any, demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    # an empty EuroSAT folder passes the pre-flight check, then its runs fail: a data error, not retried
    root = tmp_path / "data"
    (root / "eurosat").mkdir(parents=True)
    for child in demo_root.iterdir():
        (root / child.name).symlink_to(child)
    code, printed = _cli(_argv(root, out, "--launcher", "ray", "--max-retries", "1",
                               methods=["zeroshot", "coop"], datasets=("mmprompt_demo", "eurosat"),
                               overrides=[*COMMON_OVERRIDES, "optim.epochs=2"]))
    assert code == 1
    results = json.loads((out / "results.json").read_text())
    assert [f["run"] for f in results["failed"]] == [
        f"{m} on eurosat, seed {s} (base2novel)" for m in ("zeroshot", "coop") for s in (1, 2)]
    assert all(f["attempts"] == 1 and "eurosat" in f["cause"].lower() for f in results["failed"])
    for method in ("zeroshot", "coop"):
        assert set(results["methods"][method]["datasets"]) == {"mmprompt_demo"}
        assert results["methods"][method]["datasets"]["mmprompt_demo"]["n_seeds"] == 2
    assert "FAILED (4 runs, not in the table):" in printed
    assert "- coop on eurosat, seed 2 (base2novel):" in (out / "results.md").read_text()
    error_log = (out / "coop" / "eurosat" / "base2novel-4shots" / "seed1" / "error.log").read_text()
    assert "== attempt 1:" in error_log and "== attempt 2:" not in error_log


@pytest.mark.slow
def test_ctrl_c_cancels_the_sweep_and_the_same_command_finishes_it(cluster: Any, sequential: Path, demo_root: Path,
                                                                   tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "ray"
    argv = _argv(demo_root, out, "--launcher", "ray")
    proc = subprocess.Popen([sys.executable, "-m", "mmprompt.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.rglob("metrics.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "cancelling" in err
    finished = list(out.rglob("metrics.json"))
    assert 0 < len(finished) < 6  # interrupted with runs in flight
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no half-written file
    assert not (out / "results.json").exists()
    for path in finished:
        assert json.loads(path.read_text())["status"] == "done"
    # the same command finishes the sweep: the same table as the sequential launcher
    assert _cli(argv)[0] == 0
    assert _without_costs(out) == _without_costs(sequential)


def test_ray_sweep_with_the_presets_null_loader_workers(cluster: Any, demo_root: Path, tmp_path: Path) -> None:
    """The presets leave data.num_workers null (what the machine has): the Ray launcher used to crash on it."""
    from mmprompt.protocols.ray_launcher import loader_workers

    assert loader_workers({"data": {"num_workers": None}}) >= 0
    assert loader_workers({"data": {"num_workers": 3}}) == 3
    out = tmp_path / "ray-null-workers"
    overrides = [o for o in FAST if not o.startswith(("data.num_workers", "maple:"))]
    code, printed = _cli(_argv(demo_root, out, "--launcher", "ray", methods=["zeroshot"], overrides=overrides))
    assert code == 0, printed
    assert (out / "results.json").is_file()
