"""The learning-rate schedule per epoch (Dassl, the default) or per iteration (CLIP-LoRA), runs measured in
iterations, and resuming runs written before these options existed.

The per-iteration rates are checked against torch's own ``CosineAnnealingLR(T_max=total, eta_min=1e-6)``
stepped once per iteration, which is what CLIP-LoRA's official loop does (spec quirk 9). ``tests/data/schedule_v1``
was written by the code before the options were added (its README says how).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mmprompt.checks import ConfigError
from mmprompt.cli import main
from mmprompt.config import OptimSection, RunConfig, list_presets, load_config
from mmprompt.engine.checkpoint import (
    ResumeMismatchError,
    check_resume,
    default_values,
    load_state,
    state_path,
)
from mmprompt.engine.optim import WarmupCosineLR, build_optimizer, lr_at, schedule_plan
from test_engine_support import assert_same_prompts, fast_config, make_data_root, one_thread, save_tiny_clip

OLD = Path(__file__).parent / "data" / "schedule_v1"

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


def _torch_cosine(base: float, total: int, eta_min: float) -> list[float]:
    """The rate of each of ``total`` iterations under torch's scheduler, stepped after every iteration."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=eta_min)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# ------------------------------------------------------------------------------------- defaults unchanged
def test_the_defaults_are_the_per_epoch_schedule_of_before() -> None:
    o = OptimSection()
    assert (o.schedule, o.min_lr, o.iterations, o.iterations_per_shot, o.epochs) == ("epoch_cosine", 0.0, None, None, 5)
    for name in list_presets():
        if name == "clip_lora_fs":
            continue
        opt = load_config(name).optim
        assert (opt.schedule, opt.min_lr, opt.iterations, opt.iterations_per_shot) == ("epoch_cosine", 0.0, None, None)
        assert isinstance(opt.epochs, int)
        plan = schedule_plan(opt, 16, 7)
        assert (plan.per_iteration, plan.epochs, plan.schedule_steps, plan.warmup_steps, plan.total_steps) == (
            False, opt.epochs, opt.epochs, opt.warmup_epochs, 7 * opt.epochs)
    # with no floor, the rate is the former expression to the last bit
    for e in range(12):
        former = 1e-5 if e < 1 else 0.0035 * (1 + math.cos(math.pi * (e - 1) / 12)) / 2
        assert lr_at(e, 0.0035, 12, 1, 1e-5) == former


# ------------------------------------------------------------------------------------------- the config
def test_clip_lora_trains_500_iterations_per_shot() -> None:
    for shots in (1, 2, 4, 8, 16):
        cfg = load_config("clip_lora_fs", [f"data.shots={shots}"], dataset="imagenet")
        plan = schedule_plan(cfg.optim, cfg.data.shots, 13)
        assert (plan.total_steps, plan.schedule_steps, plan.warmup_steps, plan.per_iteration) == (
            500 * shots, 500 * shots, 0, True)
        assert plan.epochs == math.ceil(500 * shots / 13)
    # --set optim.epochs=N still trains N epochs, the cosine per iteration over them
    plan = schedule_plan(load_config("clip_lora_fs", ["optim.epochs=3"]).optim, 16, 5)
    assert (plan.epochs, plan.total_steps, plan.schedule_steps) == (3, 15, 15)


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.epochs=null"], "optim.iterations or optim.iterations_per_shot must give"),
    (["optim.epochs=null", "optim.iterations=10", "optim.iterations_per_shot=5"], "both set the run's length"),
    (["optim.epochs=null", "optim.iterations_per_shot=5", "data.shots=0"], "data.shots is 0"),
    (["optim.schedule=per_step"], "optim.schedule must be one of"),
    (["optim.min_lr=-1"], "optim.min_lr"),
    (["optim.iterations=0"], "optim.iterations"),
])
def test_bad_schedule_settings_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config("maple_b2n", overrides)
    assert "\n" not in str(info.value)


def test_an_old_config_reads_the_new_fields_as_defaults() -> None:
    old = load_config("maple_b2n").to_dict()
    for key in ("schedule", "min_lr", "iterations", "iterations_per_shot"):
        del old["optim"][key]
    assert RunConfig.from_dict(old).optim == load_config("maple_b2n").optim
    from mmprompt.yamlio import read_yaml

    written = read_yaml(OLD / "coop_epoch1" / "config.yaml")  # a run's config.yaml written before the options
    assert "schedule" not in written["optim"]
    optim = RunConfig.from_dict(written).optim
    assert (optim.schedule, optim.min_lr, optim.iterations, optim.iterations_per_shot, optim.epochs) == (
        "epoch_cosine", 0.0, None, None, 3)


# --------------------------------------------------------------------------------------- the resume check
def test_a_state_without_the_new_fields_reads_them_as_defaults() -> None:
    current = {"method.name": "coop", "optim.lr": 0.002, "optim.schedule": "epoch_cosine", "optim.min_lr": 0.0,
               "optim.iterations": None, "optim.iterations_per_shot": None}
    state = {"resume_values": {"method.name": "coop", "optim.lr": 0.002}}
    assert check_resume(state, current, False, "s/checkpoint/state.pt") == []
    changed = {**current, "optim.schedule": "iter_cosine", "optim.min_lr": 1e-6}
    with pytest.raises(ResumeMismatchError) as info:
        check_resume(state, changed, False, "s/checkpoint/state.pt")
    assert "optim.schedule: 'epoch_cosine' -> 'iter_cosine'" in str(info.value)
    assert "optim.min_lr: 0.0 -> 1e-06" in str(info.value)
    assert check_resume(state, changed, True, "s/checkpoint/state.pt") == [
        {"field": "optim.min_lr", "old": 0.0, "new": 1e-6},
        {"field": "optim.schedule", "old": "epoch_cosine", "new": "iter_cosine"}]
    # a method option the state does not record is read as the method's own default
    defaults = default_values({"method.name": "coop"})
    assert defaults["method.n_ctx"] == 16 and defaults["optim.schedule"] == "epoch_cosine"


def _old_args(root: Path, out: Path) -> list[str]:
    return ["train", "--method", "coop", "--dataset", "mmprompt_demo", "--data-root", str(root), "--clip", "demo",
            "--output", str(out), "--shots", "2", "--no-progress", "--device", "cpu", "--subsample", "base",
            "--set", "optim.epochs=3", "optim.batch_size=8", "method.n_ctx=4"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmprompt.demo.world import generate_demo_dataset

    root = tmp_path_factory.mktemp("schedule_demo")
    generate_demo_dataset(root, seed=0, per_class_train=2, per_class_val=0, per_class_test=2)
    return root


def test_a_run_written_before_the_options_resumes_exactly(demo_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD / "coop_epoch1", run)
    saved = load_state(state_path(run))["resume_values"]
    assert "optim.schedule" not in saved and "optim.min_lr" not in saved and saved["optim.epochs"] == 3
    # another schedule is refused, naming the field with the default the old run trained with
    assert main([*_old_args(demo_root, run), "optim.schedule=iter_cosine", "--resume"]) != 0
    err = capsys.readouterr().err
    assert "optim.schedule: 'epoch_cosine' -> 'iter_cosine'" in err and "Traceback" not in err
    assert main([*_old_args(demo_root, run), "--resume"]) == 0
    old = load_file(str(OLD / "coop" / "prompts.safetensors"))
    new = load_file(str(run / "prompts.safetensors"))
    assert_same_prompts(old, new)
    recorded = json.loads((OLD / "coop" / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] == 1
    assert metrics["train"]["final_loss"] == recorded["train"]["final_loss"]
    for split in ("base", "novel"):
        assert metrics["eval"][split]["per_class_accuracy"] == recorded["eval"][split]["per_class_accuracy"]


# ---------------------------------------------------------------------------------- per-iteration runs
@pytest.fixture(scope="module")
def lora_env(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from mmprompt.engine.clip_source import resolve_clip
    from mmprompt.engine.run import load_splits

    base = tmp_path_factory.mktemp("schedule_lora")
    weights = save_tiny_clip(base / "tiny.pt")
    # 4 classes x 3 shots = 12 images, batches of 5 (drop_last): 2 iterations a pass; 5 x 3 = 15 iterations is
    # 8 passes, the last one cut after its first iteration
    cfg = fast_config(make_data_root(base / "data"), weights, preset="clip_lora_fs",
                      extra=["optim.epochs=null", "data.shots=3", "optim.iterations_per_shot=5", "optim.batch_size=5",
                             "method.dropout_rate=0.25"])
    model, info = resolve_clip(weights, "quick_gelu", "cpu")
    return cfg, model, info, load_splits(cfg)


def _run(env, out: Path, cfg: RunConfig | None = None, **kw):  # noqa: ANN001, ANN003, ANN202
    from mmprompt.engine.run import run_experiment

    base, model, info, splits = env
    return run_experiment(cfg or base, model, info, out, train_splits=splits, progress=False, **kw)


def _steps(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == "step"]


def test_the_engine_rates_per_iteration_are_cosine_annealing_per_iteration(lora_env, tmp_path: Path) -> None:
    cfg = lora_env[0]
    assert (cfg.optim.schedule, cfg.optim.min_lr, cfg.optim.lr, cfg.optim.warmup_epochs) == ("iter_cosine", 1e-6, 2e-4, 0)
    metrics = _run(lora_env, tmp_path / "full")
    steps = _steps(tmp_path / "full")
    assert len(steps) == 15  # 500 x shots in the preset; here 5 x 3
    assert [(r["epoch"], r["step"]) for r in steps] == [(e, s) for e in range(1, 9) for s in (1, 2)][:15]
    expected = _torch_cosine(2e-4, 15, 1e-6)
    assert [r["lr"] for r in steps] == pytest.approx(expected, rel=1e-12, abs=0)
    assert len(set(expected)) == 15  # the rate changes every iteration, not once per pass
    assert metrics["train"]["epochs"] == 8
    state = load_state(state_path(tmp_path / "full"))
    assert state["epoch"] == 8 and state["scheduler"]["last_epoch"] == 15


def test_resuming_in_the_middle_of_the_iterations_is_exact(lora_env, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run(lora_env, full)
    assert _run(lora_env, cut, stop_after_epochs=3) is None
    state = load_state(state_path(cut))
    assert state["epoch"] == 3 and state["scheduler"]["last_epoch"] == 6  # 6 of 15 iterations done
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(_torch_cosine(2e-4, 15, 1e-6)[6], rel=1e-12)
    assert _run(lora_env, cut)["train"]["resumed_from"] == 3
    assert_same_prompts(load_file(str(full / "prompts.safetensors")), load_file(str(cut / "prompts.safetensors")))
    assert [r["lr"] for r in _steps(cut)] == [r["lr"] for r in _steps(full)]
    assert [r["loss"] for r in _steps(cut)] == [r["loss"] for r in _steps(full)]


def test_an_allowed_switch_to_the_per_iteration_schedule_continues_at_the_iterations_done(
        lora_env, tmp_path: Path) -> None:
    per_epoch = lora_env[0].with_overrides(["optim.schedule=epoch_cosine", "optim.min_lr=0"])
    run = tmp_path / "run"
    assert _run(lora_env, run, cfg=per_epoch, stop_after_epochs=2) is None
    _run(lora_env, run, allow_config_change=True)
    steps = _steps(run)
    assert [r["lr"] for r in steps[:4]] == pytest.approx([lr_at(e, 2e-4, 8, 0) for e in (0, 0, 1, 1)], rel=1e-12)
    assert [r["lr"] for r in steps[4:]] == pytest.approx(_torch_cosine(2e-4, 15, 1e-6)[4:], rel=1e-12)


def test_the_scheduler_state_of_before_loads() -> None:
    """A scheduler state written before ``min_lr`` existed keeps the floor of the new config (0: the same)."""
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], 0.002)
    sched = WarmupCosineLR(opt, 10)
    state = {k: v for k, v in sched.state_dict().items() if k != "min_lr"}
    sched2 = WarmupCosineLR(build_optimizer([nn.Parameter(torch.zeros(1))], 0.002), 10, min_lr=0.0)
    sched2.load_state_dict(state)
    assert sched2.min_lr == 0.0 and sched2.lr_for(3) == sched.lr_for(3) == [lr_at(3, 0.002, 10)]


def test_reproduce_prices_a_run_measured_in_iterations_by_its_passes(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import re

    for k in (4, 16):
        assert main(["reproduce", "clip_lora", "--protocols", "few-shot", "--datasets", "dtd", "--shots", str(k),
                     "--seeds", "1", "--dry-run", "--output", str(tmp_path / f"r{k}")]) == 0
        rows = re.findall(r"^few-shot +clip_lora +dtd +1 +(\d+) +to run", capsys.readouterr().out, re.M)
        # DTD: 47 classes; K shots in batches of 32 (the last, partial one dropped); 500 x K iterations
        assert [int(r) for r in rows] == [math.ceil(500 * k / (47 * k // 32))]


def test_a_state_with_only_a_fingerprint_of_the_former_fields_resumes() -> None:
    """States written before the settings were recorded keep only a hash of them, without the new fields."""
    from mmprompt.engine.checkpoint import config_fingerprint

    former = {"method.name": "coop", "optim.lr": 0.002, "optim.epochs": 5}
    current = {**former, "optim.schedule": "epoch_cosine", "optim.min_lr": 0.0, "optim.iterations": None,
               "optim.iterations_per_shot": None}
    state = {"fingerprint": config_fingerprint(former)}
    assert check_resume(state, current, False, "s/checkpoint/state.pt") == []
    with pytest.raises(ResumeMismatchError, match="records no settings"):
        check_resume(state, {**current, "optim.schedule": "iter_cosine"}, False, "s/checkpoint/state.pt")
