"""A method from another distribution: installed into a temporary site directory, found through the
``mmprompt.methods`` entry-point group, trained through ``mmprompt train`` and ``mmprompt benchmark``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_engine_support import make_data_root, save_tiny_clip

PLUGIN = Path(__file__).parent / "plugin_probe"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` of the plugin (a real wheel build) into a fresh folder."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    assert (target / "mmprompt_probe").is_dir()
    assert any(p.name.endswith(".dist-info") for p in target.iterdir())
    return target


def mmprompt(site: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "MMPROMPT_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmprompt.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_plugin_method_trains_through_train_and_benchmark(site: Path, tmp_path: Path) -> None:
    data = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    common = ["--data-root", str(data), "--clip", str(weights), "--clip-activation", "quick_gelu", "--no-progress",
              "--num-workers", "0", "--shots", "2", "--set", "optim.epochs=2", "log.every=1"]
    # no --config: the plugin's own preset comes from its table row
    run = mmprompt(site, tmp_path, "train", "--method", "probe", "--dataset", "eurosat", "--output",
                   str(tmp_path / "run"), *common)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "prompts.json").read_text())
    assert meta["method"] == "probe" and meta["config"]["anchor_weight"] == 0.5
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("anchor" in r for r in log if r["event"] in ("step", "epoch"))
    sweep = mmprompt(site, tmp_path, "benchmark", "base2novel", "--method", "probe", "zeroshot", "--datasets",
                     "eurosat", "--seeds", "1", "--output", str(tmp_path / "sweep"), *common)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert "probe" in json.dumps(results) and "zeroshot" in json.dumps(results)
    listed = mmprompt(site, tmp_path, "train", "--list-presets")
    assert listed.returncode == 0


@pytest.mark.slow  # three subprocess runs; tests/test_mmrl.py covers the same engine paths in-process
def test_plugin_method_declares_its_inference_paths(site: Path, tmp_path: Path) -> None:
    """A plugin's two paths are chosen by the protocol (its first on the trained classes, its last on the novel
    ones), recorded in metrics.json, and selectable (and checked) in ``mmprompt eval --path``."""
    data = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    common = ["--data-root", str(data), "--clip", str(weights), "--clip-activation", "quick_gelu", "--no-progress",
              "--num-workers", "0"]
    run = mmprompt(site, tmp_path, "train", "--method", "probe_paths", "--dataset", "eurosat", "--output",
                   str(tmp_path / "run"), *common, "--shots", "2", "--set", "optim.epochs=1")
    assert run.returncode == 0, run.stderr[-3000:]
    evals = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]
    assert (evals["base"]["path"], evals["novel"]["path"]) == ("seen", "unseen")
    out = tmp_path / "eval.json"
    ev = mmprompt(site, tmp_path, "eval", "--checkpoint", str(tmp_path / "run"), "--dataset", "eurosat",
                  "--subsample", "new", "--path", "seen", "--output", str(out), *common)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(out.read_text())["path"] == "seen"
    bad = mmprompt(site, tmp_path, "eval", "--checkpoint", str(tmp_path / "run"), "--dataset", "eurosat",
                   "--path", "base", *common)
    assert bad.returncode == 2 and "no inference path 'base'; its paths: seen, unseen" in bad.stderr
    assert "Traceback" not in bad.stderr
def test_a_plugin_method_adapts_the_weights_through_the_hook(site: Path, tmp_path: Path) -> None:
    """``probe_lora`` (module ``mmprompt_probe.lora``) trains a rank-1 update of one value projection through
    ``weight_adapters()``: the checkpoint holds the two matrices, which trained, and merging them into the CLIP
    gives the learner's logits."""
    data = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    run = mmprompt(site, tmp_path, "train", "--method", "probe_lora", "--dataset", "eurosat", "--output",
                   str(tmp_path / "run"), "--data-root", str(data), "--clip", str(weights), "--clip-activation",
                   "quick_gelu", "--no-progress", "--num-workers", "0", "--shots", "2", "--set", "optim.epochs=2")
    assert run.returncode == 0, run.stderr[-3000:]
    script = f"""
import torch
from safetensors.torch import load_file
from mmprompt.checkpoint import load_prompts
from mmprompt.engine.clip_source import resolve_clip
saved = load_file({str(tmp_path / "run" / "prompts.safetensors")!r})
assert sorted(saved) == ["trainable.value.A", "trainable.value.B"], sorted(saved)
assert float(saved["trainable.value.B"].abs().max()) > 0
model, _ = resolve_clip({str(weights)!r}, "quick_gelu", "cpu")
learner = load_prompts({str(tmp_path / "run")!r}, model).eval()
images = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    before = learner(images)
    learner.merge_weight_adapters()
    assert learner.active_weight_adapters() == (None, None)
    torch.testing.assert_close(learner(images), before, rtol=1e-5, atol=1e-5)
print("ok")
"""
    check = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site),
                                                                            os.environ.get("PYTHONPATH", "")])})
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr[-3000:]


def test_plugin_option_errors_are_one_clear_line(site: Path, tmp_path: Path) -> None:
    data = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    run = mmprompt(site, tmp_path, "train", "--method", "probe", "--dataset", "eurosat", "--output",
                   str(tmp_path / "run"), "--data-root", str(data), "--clip", str(weights), "--no-progress",
                   "--set", "method.ctx_lr_mult=0")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "probe.ctx_lr_mult must be a positive number, got 0" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_a_plugin_method_reads_class_descriptions(site: Path, tmp_path: Path) -> None:
    """The class-descriptions extension point from another distribution: given with --descriptions, saved with
    the prompts; a method that needs them run without them says what to pass (exit 2, no traceback)."""
    data = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    described = tmp_path / "described.json"
    given = {"annual_crop_land": ["fields of crops."], "FOREST": ["many trees."],
             "Herbaceous Vegetation Land": ["grass."], "highway or road": ["a road."]}
    described.write_text(json.dumps(given))
    common = ["--method", "probe_described", "--dataset", "eurosat", "--data-root", str(data), "--clip", str(weights),
              "--clip-activation", "quick_gelu", "--no-progress", "--num-workers", "0", "--shots", "2",
              "--set", "optim.epochs=1"]
    run = mmprompt(site, tmp_path, "train", *common, "--output", str(tmp_path / "run"), "--descriptions", str(described))
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "prompts.json").read_text())
    assert meta["dataset"]["descriptions"] == {k: given[k] for k in ("annual_crop_land", "FOREST")}  # base classes
    missing = mmprompt(site, tmp_path, "train", *common, "--output", str(tmp_path / "none"))
    assert missing.returncode == 2, missing.stderr[-3000:]
    assert "probe_described with these options needs class descriptions for eurosat: pass --descriptions FILE" \
        in missing.stderr and "Traceback" not in missing.stderr


def test_without_the_plugin_the_method_is_unknown(tmp_path: Path) -> None:
    from mmprompt.methods import list_methods

    assert not {"probe", "probe_paths", "probe_lora", "probe_distill"} & set(list_methods())


def test_plugin_method_uses_the_teacher_hook(site: Path, tmp_path: Path) -> None:
    """A plugin learner with ``needs_teacher`` gets the run passed with --teacher, frozen and unsaved; its
    checkpoint records the teacher's checksum, and without --teacher the run is refused in one line."""
    data = make_data_root(tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    common = ["--dataset", "eurosat", "--data-root", str(data), "--clip", str(weights), "--clip-activation",
              "quick_gelu", "--no-progress", "--num-workers", "0", "--shots", "2", "--set", "optim.epochs=1"]
    teacher = tmp_path / "teacher"
    run = mmprompt(site, tmp_path, "train", "--method", "coop", "--output", str(teacher), *common)
    assert run.returncode == 0, run.stderr[-3000:]
    refused = mmprompt(site, tmp_path, "train", "--method", "probe_distill", "--output", str(tmp_path / "x"), *common)
    assert refused.returncode == 2 and "pass --teacher" in refused.stderr and "Traceback" not in refused.stderr
    run = mmprompt(site, tmp_path, "train", "--method", "probe_distill", "--output", str(tmp_path / "student"),
                   "--teacher", str(teacher), *common)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "student" / "prompts.json").read_text())
    assert meta["extra"]["teacher"]["method"] == "coop" and len(meta["extra"]["teacher"]["sha256"]) == 64
    log = [json.loads(line) for line in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert all("kd" in r for r in log if r["event"] == "epoch")
