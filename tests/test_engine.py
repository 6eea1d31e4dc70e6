"""Engine: LR schedule, configs, exact repetition and resumption, NaN stop, accumulation, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mmprompt.config import ConfigError, RunConfig, list_presets, load_config
from mmprompt.engine.checkpoint import load_state, state_path
from mmprompt.engine.clip_source import resolve_clip
from mmprompt.engine.evaluate import evaluate
from mmprompt.engine.loader import EpochBatchSampler, epoch_order
from mmprompt.engine.optim import WarmupCosineLR, build_optimizer, lr_at
from mmprompt.engine.run import build_learner, load_splits, run_experiment
from mmprompt.engine.train import NonFiniteLossError, train
from test_engine_support import assert_same_prompts, fast_config, make_data_root, one_thread, save_tiny_clip

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("engine")
    return make_data_root(base / "data"), save_tiny_clip(base / "tiny.pt")


@pytest.fixture(scope="module")
def clip(env: tuple[Path, Path]):
    model, info = resolve_clip(env[1], "quick_gelu", "cpu")
    return model, info


def _run(cfg: RunConfig, clip, out: Path, **kw):
    model, info = clip
    splits = load_splits(cfg)
    return run_experiment(cfg, model, info, out, train_splits=splits, progress=False, **kw)


def _saved_prompts(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "prompts.safetensors"))


# ------------------------------------------------------------------------------------------------ schedule
def test_lr_schedule_maple_b2n_matches_spec() -> None:
    cfg = load_config("maple_b2n").optim
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = WarmupCosineLR(opt, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr)
    seen = []
    for _ in range(cfg.epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # SPEC section 3, computed independently: e = 0 warm-up, then base * (1 + cos(pi * (e - 1) / max_epoch)) / 2
    expected = [1e-5] + [0.0035 * (1 + math.cos(math.pi * (e - 1) / 5)) / 2 for e in range(1, 5)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    # and the literal values SPEC lists, to 4 significant digits
    for got, literal in zip(seen, [1e-5, 3.5e-3, 3.166e-3, 2.291e-3, 1.209e-3], strict=True):
        assert float(f"{got:.4g}") == literal
    assert [lr_at(e, 0.0035, 5) for e in range(5)] == pytest.approx(expected, rel=1e-12)


def test_scheduler_state_round_trip() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], 0.002)
    sched = WarmupCosineLR(opt, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    opt2 = build_optimizer([nn.Parameter(torch.zeros(1))], 0.002)
    sched2 = WarmupCosineLR(opt2, 10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for o, sc in ((opt, sched), (opt2, sched2)):
        o.step()
        sc.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == lr_at(4, 0.002, 10)


def test_optimizer_rejects_frozen_or_empty() -> None:
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer([], 0.1)
    with pytest.raises(ValueError, match="do not require"):
        build_optimizer([nn.Parameter(torch.zeros(1), requires_grad=False)], 0.1)


# ------------------------------------------------------------------------------------------------ configs
def test_every_preset_loads_and_spec_rows() -> None:
    assert {"maple_b2n", "maple_xd", "ivlp_b2n", "language_b2n", "vpt_b2n", "cocoop_b2n", "coop"} <= set(list_presets())
    rows = {  # SPEC section 3: lr, epochs, batch
        "maple_b2n": (0.0035, 5, 4), "maple_xd": (0.0026, 2, 4), "ivlp_b2n": (0.0035, 5, 4),
        "language_b2n": (0.0025, 5, 4), "vpt_b2n": (0.0025, 5, 4), "cocoop_b2n": (0.002, 10, 1),
        "coop": (0.002, 200, 32),
    }
    for name, (lr, epochs, batch) in rows.items():
        cfg = load_config(name)
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.batch_size) == (lr, epochs, batch), name
        assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.warmup_lr) == (0.9, 5e-4, 1e-5)
        assert cfg.eval_batch_size == 100
        cfg.method_config()  # the method options are valid
    assert load_config("maple_xd").method.options["depth"] == 3
    assert load_config("coop", dataset="imagenet").optim.epochs == 50
    assert load_config("coop", ["optim.epochs=7"], dataset="imagenet").optim.epochs == 7  # command line wins


def test_overrides_are_yaml_scalars() -> None:
    cfg = load_config("maple_b2n", ["optim.lr=1e-3", "method.n_ctx=4", "data.skip_corrupt=true",
                                    "method.ctx_init=a photo of", "precision=bf16", "optim.max_grad_norm=null"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.method.options["n_ctx"] == 4
    assert cfg.data.skip_corrupt is True
    assert cfg.method.options["ctx_init"] == "a photo of"
    assert cfg.precision == "bf16" and cfg.optim.max_grad_norm is None
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nothing.here=1", "nothing.here"),
        ("method.n_ctxx=2", "n_ctxx"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.epochs=2.5", "optim.epochs"),
        ("data.subsample=half", "data.subsample"),
        ("precision=fp8", "precision"),
        ("method.name=nope", "nope"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("no_equals_sign", "dotted.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config("maple_b2n", [override])


def test_dataset_overrides_resolve_once() -> None:
    cfg = load_config("coop", ["data.dataset=imagenet"])  # the dataset may come from an override too
    assert cfg.optim.epochs == 50 and cfg.dataset_overrides == {}
    explicit = load_config("coop", ["data.dataset=imagenet", "optim.epochs=7"])
    reloaded = RunConfig.from_dict(json.loads(json.dumps(explicit.to_dict()))).for_dataset("imagenet")
    assert explicit.optim.epochs == reloaded.optim.epochs == 7  # a run's config.yaml reloads as it ran


def test_unknown_preset_and_yaml_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(bad)


# ------------------------------------------------------------------------------------------------ data order
def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    assert epoch_order(20, 1, 3) == epoch_order(20, 1, 3)
    assert epoch_order(20, 1, 3)[0] != epoch_order(20, 1, 4)[0]
    one = [i for b in EpochBatchSampler(10, 4, seed=5, drop_last=True) for i in b]
    two = [EpochBatchSampler(10, 4, seed=5, drop_last=True, rank=r, world_size=2) for r in range(2)]
    shards = list(zip(*two, strict=True))
    assert [i for a, b in shards for i in (*a, *b)] == one  # the ranks' slices rebuild the global batches
    assert all(item[2] == 4 for item in one) and len(one) == 8  # drop_last drops the 2 left over


# ------------------------------------------------------------------------------------------------ training
def test_cpu_run_repeats_exactly(env, clip, tmp_path: Path) -> None:
    root, weights = env
    cfg = fast_config(root, weights)
    a = _run(cfg, clip, tmp_path / "a")
    b = _run(cfg, clip, tmp_path / "b")
    assert_same_prompts(_saved_prompts(tmp_path / "a"), _saved_prompts(tmp_path / "b"))
    assert a["eval"] == b["eval"] or all(a["eval"][k]["accuracy"] == b["eval"][k]["accuracy"] for k in a["eval"])
    c = _run(cfg.with_overrides(["data.seed=2"]), clip, tmp_path / "c")
    assert c is not None
    diff = _saved_prompts(tmp_path / "c")
    assert any(not torch.equal(v, diff[k]) for k, v in _saved_prompts(tmp_path / "a").items())
    for name in ("config.yaml", "metrics.json", "prompts.json", "prompts.safetensors", "log.jsonl", "tb"):
        assert (tmp_path / "a" / name).exists(), name
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()
           if json.loads(x)["event"] == "epoch"]
    assert lrs == pytest.approx([lr_at(e, 0.0035, 3) for e in range(3)])


def test_resume_after_interruption_is_exact(env, clip, tmp_path: Path) -> None:
    root, weights = env
    cfg = fast_config(root, weights, extra=["optim.epochs=4"])
    _run(cfg, clip, tmp_path / "full")

    # stopped by the session limit after 2 epochs, then resumed
    assert _run(cfg, clip, tmp_path / "limited", stop_after_epochs=2) is None
    assert load_state(state_path(tmp_path / "limited"))["epoch"] == 2
    assert not (tmp_path / "limited" / "metrics.json").exists()
    assert _run(cfg, clip, tmp_path / "limited")["train"]["resumed_from"] == 2

    # killed by an exception right after epoch 1's state was written, then resumed
    def crash(epoch: int, _result) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, clip, tmp_path / "crashed", on_epoch_end=crash)
    # something disturbs the global RNGs between the sessions: the state restores them
    torch.manual_seed(1234)
    _run(cfg, clip, tmp_path / "crashed")

    full = _saved_prompts(tmp_path / "full")
    assert_same_prompts(full, _saved_prompts(tmp_path / "limited"))
    assert_same_prompts(full, _saved_prompts(tmp_path / "crashed"))


def test_loader_workers_do_not_change_the_result(env, clip, tmp_path: Path) -> None:
    root, weights = env
    cfg = fast_config(root, weights, extra=["optim.epochs=2"])
    _run(cfg, clip, tmp_path / "w0")
    _run(cfg.with_overrides(["data.num_workers=2"]), clip, tmp_path / "w2")
    assert_same_prompts(_saved_prompts(tmp_path / "w0"), _saved_prompts(tmp_path / "w2"))


def test_nan_loss_stops_and_keeps_last_good_state(env, clip, tmp_path: Path) -> None:
    root, weights = env
    cfg = fast_config(root, weights)
    model, _ = clip
    splits = load_splits(cfg)
    learner = build_learner(cfg, model, splits)
    after_first: dict[str, torch.Tensor] = {}

    def poison(epoch: int, _result) -> None:
        if epoch == 0:
            after_first.update(learner.prompt_state_dict())
            learner.register_forward_hook(
                lambda _m, _i, out: dataclasses.replace(out, total=out.total * float("nan")))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2 .*step 1") as info:
        train(learner, splits.train, cfg, tmp_path, image_dir=splits.image_dir, on_epoch_end=poison)
    assert info.value.checkpoint == state_path(tmp_path)
    state = load_state(state_path(tmp_path))
    assert state["epoch"] == 1
    assert_same_prompts(after_first, state["prompts"])


def test_gradient_accumulation_matches_larger_batch(env, clip, tmp_path: Path) -> None:
    root, weights = env
    model, _ = clip
    results = []
    for extra in (["optim.batch_size=4"], ["optim.batch_size=2", "optim.grad_accum=2"]):
        cfg = fast_config(root, weights, extra=extra)
        splits = load_splits(cfg)
        torch.manual_seed(0)
        learner = build_learner(cfg, model, splits)
        train(learner, splits.train, cfg, None, image_dir=splits.image_dir)
        results.append(learner.prompt_state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(env, clip, precision: str) -> None:
    root, weights = env
    cfg = fast_config(root, weights, extra=[f"precision={precision}", "optim.epochs=2"])
    model, _ = clip
    splits = load_splits(cfg)
    learner = build_learner(cfg, model, splits)
    before = learner.prompt_state_dict()
    result = train(learner, splits.train, cfg, None, image_dir=splits.image_dir)
    after = learner.prompt_state_dict()
    assert result.completed and all(torch.isfinite(v).all() for v in after.values())
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_counts_and_caches_text_features(env, clip, monkeypatch: pytest.MonkeyPatch) -> None:
    root, weights = env
    cfg = fast_config(root, weights, extra=["data.subsample=all"])
    model, _ = clip
    splits = load_splits(cfg)
    learner = build_learner(cfg, model, splits)
    calls = {"n": 0}
    original = learner.class_text_features

    def counted():
        calls["n"] += 1
        return original()

    monkeypatch.setattr(learner, "class_text_features", counted)
    result = evaluate(learner, splits.test, image_dir=splits.image_dir, batch_size=5)
    assert calls["n"] == 1  # once per evaluation, not per batch (3 batches here)
    # reference: logits image by image
    from mmprompt.clip.transforms import build_transform
    from mmprompt.data.images import load_image

    t = build_transform(32, train=False)
    with torch.no_grad():
        preds = [int(learner(t(load_image(splits.abspath(s))).unsqueeze(0)).argmax()) for s in splits.test]
    labels = [s.label for s in splits.test]
    hits = [p == y for p, y in zip(preds, labels, strict=True)]
    assert result.total == len(labels) and result.correct == sum(hits)
    assert result.accuracy == pytest.approx(100 * sum(hits) / len(hits))
    for c, name in enumerate(splits.classnames):
        mine = [h for h, y in zip(hits, labels, strict=True) if y == c]
        assert result.per_class_accuracy[name] == pytest.approx(100 * sum(mine) / len(mine))


def test_cocoop_trains_and_evaluates_per_batch(env, clip, tmp_path: Path) -> None:
    root, weights = env
    cfg = fast_config(root, weights, preset="cocoop_b2n", extra=["optim.epochs=1", "optim.batch_size=2"])
    metrics = _run(cfg, clip, tmp_path)
    assert metrics["method"] == "cocoop" and 0 <= metrics["eval"]["test"]["accuracy"] <= 100


def test_zero_shot_is_not_trained(env, clip, tmp_path: Path) -> None:
    root, weights = env
    cfg = fast_config(root, weights, preset="zeroshot")
    metrics = _run(cfg, clip, tmp_path)
    assert metrics["train"] == {"epochs": 0}
    assert not (tmp_path / "checkpoint").exists()
    meta = json.loads((tmp_path / "prompts.json").read_text())
    assert meta["method"] == "zeroshot" and meta["config"]["templates"] is None  # the dataset's own template
    assert meta["dataset"] == {"name": "eurosat", "template": "a centered satellite photo of {}."}
