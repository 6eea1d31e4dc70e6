"""``mmprompt bench``: the command runs on a tiny model and prints the documented JSON (structure only)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmprompt.bench import PATHS, BenchSettings, synthetic_classnames
from mmprompt.cli import main

PATH_FIELDS = {
    "path",
    "classes",
    "config",
    "prompt_tokens",
    "train_step_s",
    "train_step_times_s",
    "first_loss",
    "eval_images_per_s",
    "eval_text_features_s",
    "image_encoder_images_per_s",
    "train_peak_memory_bytes",
    "eval_peak_memory_bytes",
    "memory_measure",
    "load_average",
    "error",
}
COMPARISON_FIELDS = {
    "train_speedup",
    "eval_speedup",
    "train_memory_fraction",
    "train_memory_fraction_is_upper_bound",
    "eval_vs_image_encoder",
    "first_loss_abs_diff",
    "precision_speedup",
}
MACHINE_FIELDS = {
    "cpu_model",
    "cpu_count",
    "torch_threads",
    "torch_version",
    "device",
    "device_name",
    "date",
    "cpu_bf16_native",
}


def test_bench_command_prints_the_documented_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["speed", "--random-weights", "--clip", "tiny", "--classes", "3", "--steps", "2", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["schema"] == "mmprompt.bench/1"
    assert doc["settings"]["method"] == "maple" and doc["settings"]["classes"] == [3]
    assert MACHINE_FIELDS <= set(doc["machine"])
    assert doc["machine"]["torch_threads"] >= 1
    [entry] = doc["results"]
    assert entry["classes"] == 3
    assert COMPARISON_FIELDS == set(entry["comparison"])
    for path in PATHS:
        r = entry[path]
        assert set(r) == PATH_FIELDS
        assert r["path"] == path and r["error"] == ""
        assert len(r["train_step_times_s"]) == 2 and r["train_step_s"] > 0
        assert r["eval_images_per_s"] > 0 and r["image_encoder_images_per_s"] > 0
        assert r["train_peak_memory_bytes"] is not None
        assert r["config"]["depth"] == 4  # MaPLe's J = 9 cut to the tiny model's 4 layers
    assert entry["default"]["config"]["truncate_text"] is True
    assert entry["reference"]["config"]["truncate_text"] is False
    assert entry["reference"]["prompt_tokens"]["run"] == 77
    assert entry["default"]["prompt_tokens"]["run"] < 77
    # same weights, prompts and inputs on both paths: the same first loss
    assert entry["comparison"]["first_loss_abs_diff"] < 1e-4
    assert entry["comparison"]["precision_speedup"] is None and "fp32_default" not in entry
    assert entry["default"]["prompt_tokens"]["shared"] > 1  # SOT, context and "of a" computed once
    assert entry["default"]["prompt_tokens"]["encoded_per_class"] < entry["default"]["prompt_tokens"]["mean"]


def test_bench_in_bf16_also_times_fp32(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["speed", "--random-weights", "--clip", "tiny", "--classes", "3", "--steps", "1", "--warmup", "0"]
    assert main([*args, "--precision", "bf16", "--eval-images", "2", "--no-isolate", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["results"]
    base = entry["fp32_default"]
    assert base["path"] == "default" and base["error"] == "" and base["train_step_s"] > 0
    assert base["eval_images_per_s"] is None  # the training step only
    speedup = entry["comparison"]["precision_speedup"]
    assert speedup == pytest.approx(base["train_step_s"] / entry["default"]["train_step_s"])


def test_bench_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--random-weights", "--clip", "tiny", "--method", "nope", "--classes", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown method" in err and err.startswith("mmprompt speed: error (")
    assert main(["speed", "--random-weights", "--clip", "tiny", "--classes", "3", "--set", "method.depth=9"]) == 2
    assert main(["speed", "--random-weights", "--clip", "tiny", "--classes", "3", "--set", "optim.lr=1"]) == 2
    assert "only method.FIELD=VALUE" in capsys.readouterr().err
    with pytest.raises(ValueError):
        BenchSettings(precision="fp8")
    with pytest.raises(SystemExit):
        main(["bench", "--classes", "0"])


def test_speed_old_spellings_warn_once_and_still_work(capsys: pytest.CaptureFixture[str]) -> None:
    """--arch / --weights / --option are deprecated spellings of --clip / --set: one warning line each."""
    code = main(["bench", "--random-weights", "--arch", "tiny", "--classes", "3", "--steps", "1", "--warmup", "0",
                 "--eval-images", "2", "--no-isolate", "--option", "depth=2", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    warnings = [line for line in captured.err.splitlines() if "deprecated" in line]
    assert warnings == ["mmprompt speed: warning: --arch is deprecated, use --clip (an architecture name with "
                        "--random-weights)", "mmprompt speed: warning: --option is deprecated, use --set "
                        "method.FIELD=VALUE"]
    [entry] = json.loads(captured.out)["results"]
    assert entry["default"]["config"]["depth"] == 2


def test_speed_runs_on_the_demo_clip_and_fails_fast_on_missing_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["speed", "--clip", "demo", "--classes", "3", "--steps", "1", "--warmup", "0", "--eval-images", "2",
                 "--no-isolate", "--device", "cpu", "--json"])
    assert code == 0, capsys.readouterr().err
    [entry] = json.loads(capsys.readouterr().out)["results"]
    assert entry["default"]["error"] == "" and entry["default"]["train_step_s"] > 0
    start = time.perf_counter()
    assert main(["speed", "--clip", str(tmp_path / "missing.pt"), "--classes", "3"]) == 4
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 20  # checked before any child process starts
    assert "Traceback" not in err and err.startswith("mmprompt speed: error (weights): CLIP weights not found")


def test_synthetic_classnames_are_realistic_and_reproducible() -> None:
    names = synthetic_classnames(300, seed=0)
    assert names == synthetic_classnames(300, seed=0)
    assert len(set(names)) == 300
    words = [len(n.split()) for n in names]
    assert min(words) == 1 and max(words) <= 4
    assert 1.5 < sum(words) / len(words) < 2.2
