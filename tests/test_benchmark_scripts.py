"""The scripts under ``benchmarks/`` run (scaled down to a tiny CLIP and a few images)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imagenet_b2n_seed_script_times_a_real_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("imagenet_b2n_seed")
    args = ["--work", str(tmp_path), "--arch", "tiny", "--classes", "4", "--train-per-class", "2",
            "--val-per-class", "2", "--precision", "fp32", "--device", "cpu", "--num-workers", "0",
            "--set", "data.shots=2", "optim.epochs=1", "method.depth=3"]
    assert script.main(args) == 0
    timing = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "timing.json").read_text()) == timing
    assert timing["returncode"] == 0 and timing["wall_s"] > 0
    runs = [v for k, v in timing.items() if isinstance(v, dict)]
    assert runs, "the run's metrics.json was not found"
    parts = runs[0]
    assert parts["train_s"] > 0 and parts["run_s"] >= parts["train_s"]
    assert {k for k in parts if k.startswith("eval_") and k.endswith("_s")}  # base / novel evaluations
    data = tmp_path / "data" / "imagenet"
    lines = (data / "classnames.txt").read_text().splitlines()
    assert len(lines) == 4 and all(line.startswith("n0000000") for line in lines)
    image = next((data / "images" / "val").rglob("*.JPEG"))
    with Image.open(image) as im:
        assert im.size == script.SIZE and im.format == "JPEG"


@pytest.mark.slow
def test_gpu_packing_script_runs_concurrent_sweeps_through_ray(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    script = _load("gpu_packing")
    args = ["--work", str(tmp_path), "--arch", "tiny", "--classes", "4", "--shots", "2", "--val-per-class", "2",
            "--precision", "fp32", "--device", "cpu", "--cpus-per-run", "1", "--num-workers", "0",
            "--concurrency", "1", "2", "--set", "method.depth=3"]
    assert script.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "packing.json").read_text()) == report
    rows = {r["concurrent_runs"]: r for r in report["rows"]}
    assert set(rows) == {1, 2}
    assert rows[2]["finished_runs"] == 2 and rows[2]["failed"] == []
    assert rows[2]["aggregate_train_img_s"] >= rows[2]["per_run_train_img_s"] > 0
    assert rows[1]["max_run_peak_gpu_mib"] is None  # CPU: no GPU figure is made up
