"""The method contract's extension points, each through the real engine on a tiny model.

The example plugin method ``probe`` (tests/plugin_probe, also installed as a real distribution by
test_plugin.py) is registered here with :func:`mmprompt.methods.register`: CoOp plus a batch-independent
``anchor`` term, a running average of its context over epochs, and a learning-rate multiplier.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.config import load_config
from mmprompt.engine.run import build_learner, load_splits
from mmprompt.engine.train import NonFiniteLossError, train
from mmprompt.methods import (
    DatasetContext,
    EncoderOptions,
    LearnerWrapper,
    MethodConfig,
    Objective,
    create_learner,
    get_method,
    legacy_name,
    list_methods,
    make_config,
    register,
    unregister,
)
from mmprompt.methods.contract import cross_entropy_objective
from mmprompt.methods.coop import CoOp, CoOpConfig
from test_engine_support import (
    assert_same_prompts,
    fast_config,
    make_data_root,
    official_teacher_for,
    one_thread,
    save_tiny_clip,
)

sys.path.insert(0, str(Path(__file__).parent / "plugin_probe"))
import mmprompt_probe  # noqa: E402

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module", autouse=True)
def probe_registered() -> Iterator[None]:
    register(mmprompt_probe.SPEC)
    yield
    unregister("probe")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("contract")
    return make_data_root(base / "data"), save_tiny_clip(base / "tiny.pt")


@pytest.fixture(scope="module")
def model(env: tuple[Path, Path]) -> CLIP:
    from mmprompt.engine.clip_source import resolve_clip

    clip, _ = resolve_clip(str(env[1]), "quick_gelu", "cpu")
    return clip


def probe_config(env: tuple[Path, Path], extra: list[str] | None = None):  # noqa: ANN201
    root, weights = env
    return fast_config(root, weights, preset=str(mmprompt_probe.SPEC.presets["base2novel"]), extra=extra)


def trained(env, model, tmp: Path | None, extra: list[str] | None = None, **kw):  # noqa: ANN001, ANN201
    cfg = probe_config(env, extra)
    splits = load_splits(cfg)
    torch.manual_seed(0)
    learner = build_learner(cfg, model, splits)
    result = train(learner, splits.train, cfg, tmp, image_dir=splits.image_dir, **kw)
    return learner, result


# ----- 1. the objective: named terms, logged everywhere, exact under accumulation, NaN in any term -------
def test_every_term_is_logged_per_step_per_epoch_and_in_tensorboard(env, model, tmp_path: Path) -> None:
    _, result = trained(env, model, tmp_path, ["optim.epochs=2", "log.tensorboard=true"])
    assert {"ce", "anchor", "loss"} <= set(result.history[-1])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert steps and len(epochs) == 2
    for r in steps + epochs:
        assert {"ce", "anchor", "loss"} <= set(r)
    first = epochs[0]
    assert first["loss"] == pytest.approx(first["ce"] + 0.5 * first["anchor"], rel=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/ce", "train/anchor", "train/loss", "epoch/ce", "epoch/anchor", "epoch/loss"} <= tags


def test_accumulation_is_exact_for_batch_dependent_and_independent_terms(env, model) -> None:
    one, _ = trained(env, model, None, ["optim.batch_size=4", "optim.epochs=2"])
    two, _ = trained(env, model, None, ["optim.batch_size=2", "optim.grad_accum=2", "optim.epochs=2"])
    for k, v in one.prompt_state_dict().items():
        torch.testing.assert_close(v, two.prompt_state_dict()[k], rtol=1e-5, atol=1e-6)


def test_a_non_finite_term_stops_the_run_and_is_named(env, model, tmp_path: Path) -> None:
    cfg = probe_config(env)
    splits = load_splits(cfg)
    learner = build_learner(cfg, model, splits)

    def poison(_m, _i, out: Objective) -> Objective:
        return dataclasses.replace(out, terms={**out.terms, "anchor": out.terms["anchor"] * float("nan")})

    learner.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="loss term 'anchor' is nan"):
        train(learner, splits.train, cfg, tmp_path, image_dir=splits.image_dir)


# ----- 2. gradient transform: grad-terms accumulated like p.grad ------------------------------------------
class Doubled(mmprompt_probe.Probe):
    """Descends nothing itself: its total is 0 x CE, and the transform puts half the gradient of 2 x CE in
    place, so it must train exactly like CE alone (the anchor weight is 0 in this test)."""

    method = "doubled"

    def objective(self, images: torch.Tensor, labels: torch.Tensor) -> Objective:
        base = super().objective(images, labels)
        return dataclasses.replace(base, total=0.0 * base.total, grad_terms={"twice": 2.0 * base.total})

    def transform_gradients(self, grad_terms) -> None:  # noqa: ANN001
        for p, g in zip(self.trainable_parameters(), grad_terms["twice"], strict=True):
            p.grad = 0.5 * g


def test_gradient_transform_sees_accumulated_grad_terms(env, model) -> None:
    spec = dataclasses.replace(mmprompt_probe.SPEC, name="doubled", learner=Doubled)
    register(spec)
    try:
        zero = ["method.anchor_weight=0.0", "optim.epochs=2"]
        plain, _ = trained(env, model, None, [*zero, "optim.batch_size=4"])
        for extra in (["optim.batch_size=4"], ["optim.batch_size=2", "optim.grad_accum=2"]):
            cfg = probe_config(env, [*zero, *extra, "method.name=doubled"])
            splits = load_splits(cfg)
            torch.manual_seed(0)
            learner = build_learner(cfg, model, splits)
            assert isinstance(learner, Doubled)
            train(learner, splits.train, cfg, None, image_dir=splits.image_dir)
            for k, v in plain.prompt_state_dict().items():
                torch.testing.assert_close(learner.prompt_state_dict()[k], v, rtol=1e-5, atol=1e-6)
    finally:
        unregister("doubled")


# ----- 3. end-of-epoch hook: its state resumes exactly ----------------------------------------------------
def test_epoch_end_state_resumes_bit_exactly(env, model, tmp_path: Path) -> None:
    extra = ["method.average_prompts=true", "optim.epochs=3"]
    whole, _ = trained(env, model, tmp_path / "whole", extra)
    first, part = trained(env, model, tmp_path / "split", extra, stop_after_epochs=1)
    assert not part.completed and set(first.training_state()) == {"average", "epochs_seen"}
    resumed, result = trained(env, model, tmp_path / "split", extra)
    assert result.resumed_from == 1 and result.completed
    assert_same_prompts(whole.prompt_state_dict(), resumed.prompt_state_dict())
    assert torch.equal(resumed.trainable.ctx, whole.training_state()["average"])  # the average was loaded


# ----- 4. parameter groups ---------------------------------------------------------------------------------
def test_parameter_groups_scale_the_rate_but_not_the_warm_up(env, model) -> None:
    from mmprompt.engine.optim import WarmupCosineLR, build_optimizer

    cfg = probe_config(env, ["method.ctx_lr_mult=6.5"])
    learner = build_learner(cfg, model, load_splits(cfg))
    opt = build_optimizer(learner.parameter_groups(), 0.0035)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.0035 * 6.5)]
    sched = WarmupCosineLR(opt, 10, 1, 1e-5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02275)
    with pytest.raises(ValueError, match="more than one parameter group"):
        build_optimizer([([learner.trainable.ctx], 1.0), ([learner.trainable.ctx], 2.0)], 0.1)


def test_a_parameter_group_may_set_its_own_weight_decay(env, model) -> None:
    from mmprompt.engine.optim import build_optimizer

    own, _ = trained(env, model, None, ["optim.epochs=2", "optim.weight_decay=0.5", "method.ctx_weight_decay=0"])
    none, _ = trained(env, model, None, ["optim.epochs=2", "optim.weight_decay=0"])
    decayed, _ = trained(env, model, None, ["optim.epochs=2", "optim.weight_decay=0.5"])
    assert_same_prompts(own.prompt_state_dict(), none.prompt_state_dict())  # the group's 0 replaced 0.5
    assert not torch.allclose(decayed.trainable.ctx, none.trainable.ctx)
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer([([a], 1.0, 0.0), ([b], 2.0)], 0.1, momentum=0.0, weight_decay=0.5)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 0.0), (pytest.approx(0.2), 0.5)]
    a.grad, b.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    assert torch.equal(a.detach(), torch.ones(2)) and torch.allclose(b.detach(), torch.full((2,), 0.9))
    with pytest.raises(ValueError, match="parameter group is"):
        build_optimizer([([a],)], 0.1)


# ----- 5. frozen teachers and the dataset context ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_config("tiny")).eval()


def test_teacher_features_are_cached_per_class_list_and_never_saved(tiny: CLIP, monkeypatch) -> None:
    learner = create_learner("coop", tiny, ["red_car", "dog"], {"n_ctx": 2})
    templates = ["a photo of a {}.", "art of the {}."]
    calls = []
    original = tiny.encode_text
    monkeypatch.setattr(tiny, "encode_text", lambda t, **kw: calls.append(1) or original(t, **kw))
    with torch.inference_mode():
        learner.teacher_text_features(templates)  # cached in inference mode...
    normalized = learner.teacher_text_features(templates)  # ...recomputed outside it (usable for training)
    assert not normalized.is_inference() and len(calls) == 4
    learner.teacher_text_features(templates)
    assert len(calls) == 4
    raw = learner.teacher_text_mean(templates, average="raw")
    per = [original(learner.tokenize([t.format(n) for n in ("red car", "dog")])).float() for t in templates]
    torch.testing.assert_close(raw, (per[0] + per[1]) / 2)
    mean_of_unit = (F.normalize(per[0], dim=-1) + F.normalize(per[1], dim=-1)) / 2
    torch.testing.assert_close(normalized, F.normalize(mean_of_unit, dim=-1))
    assert not any("teacher" in k for k in learner.state_dict()) and set(learner.prompt_state_dict()) == {"trainable.ctx"}
    learner.set_classnames(["cat"])
    assert learner.teacher_text_features(templates).shape[0] == 1
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(learner.teacher_image_features(images), F.normalize(tiny.encode_image(images), dim=-1))


def test_dataset_context_reaches_every_method(tiny: CLIP) -> None:
    eurosat = DatasetContext("eurosat", "a centered satellite photo of {}.")
    zs = create_learner("zeroshot", tiny, ["forest"], dataset=eurosat)
    assert zs.templates() == ["a centered satellite photo of {}."]
    zs.set_classnames(["forest"], dataset=DatasetContext("dtd", "{} texture."))
    assert zs.templates() == ["{} texture."] and zs.dataset.name == "dtd"
    ens = create_learner("zeroshot", tiny, ["forest"], {"ensemble": True}, dataset=DatasetContext("imagenet", "x {}."))
    assert len(ens.templates()) == 7  # CoOp's ensemble leaves ImageNet's own template out


def test_build_learner_passes_the_datasets_context(env, model) -> None:
    cfg = probe_config(env)
    splits = load_splits(cfg)
    learner = build_learner(cfg, model, splits)
    assert learner.dataset == DatasetContext("eurosat", "a centered satellite photo of {}.")


# ----- 6. evaluation logits may differ from training logits ------------------------------------------------
def test_evaluation_uses_the_eval_logits(tiny: CLIP) -> None:
    class Scaled(mmprompt_probe.Probe):
        def train_logits(self, images: torch.Tensor) -> torch.Tensor:
            return 2.0 * self.logits(images)

        def objective(self, images, labels):  # noqa: ANN001, ANN202
            return cross_entropy_objective(self.train_logits(images), labels)

    learner = Scaled(tiny, ["a", "b"], mmprompt_probe.ProbeConfig(n_ctx=2))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with torch.no_grad():
        torch.testing.assert_close(learner(images, labels).logits, 2.0 * learner(images))
        torch.testing.assert_close(learner.predict_logits(images, learner.class_text_features()), learner(images))


# ----- 7. per-block adapters in both towers -----------------------------------------------------------------
def test_block_adapters_are_exact_on_every_text_path(tiny: CLIP) -> None:
    clip = CLIP(get_config("tiny")).double().eval()
    torch.manual_seed(3)
    w_t, w_v = clip.config.text.width, clip.config.vision.width
    lin_t, lin_v = torch.randn(w_t, w_t, dtype=torch.float64) * 0.1, torch.randn(w_v, w_v, dtype=torch.float64) * 0.1
    text = [None, lambda x: x @ lin_t, None, lambda x: torch.tanh(x) @ lin_t]
    learner = create_learner("coop", clip, ["cat", "sea lion", "x"], {"n_ctx": 3})
    learner.block_adapters = lambda: ([None, lambda x: x @ lin_v], text)  # type: ignore[method-assign]
    outputs = []
    for options in ({"truncate_text": False}, {"share_text_prefix": False}, {}, {"text_chunk_size": 1}):
        learner.encoder = EncoderOptions(**options)
        outputs.append(learner.text_features())
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-10, atol=1e-10)
    plain = create_learner("coop", clip, ["cat", "sea lion", "x"], {"n_ctx": 3})
    plain.load_prompt_state_dict(learner.prompt_state_dict())
    assert (plain.text_features() - outputs[0]).abs().max() > 1e-3  # the adapters change the features
    zero = [lambda x: torch.zeros_like(x)] * clip.config.text.layers
    learner.block_adapters = lambda: (None, zero)  # type: ignore[method-assign]
    torch.testing.assert_close(learner.text_features(), plain.text_features())
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    adapted = clip.encode_image(images, adapters=[None, lambda x: x @ lin_v])
    assert (adapted - clip.encode_image(images)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="block adapters"):
        clip.encode_image(images, adapters=[None] * (clip.config.vision.layers + 1))


# ----- 8. one table owns each method ------------------------------------------------------------------------
@pytest.mark.parametrize("method", list_methods())
def test_every_method_has_loadable_presets_for_every_protocol(method: str) -> None:
    spec = get_method(method)
    for protocol in ("base2novel", "transfer", "few-shot"):
        cfg = load_config(spec.preset_for(protocol))
        assert cfg.method.name == method, (protocol, spec.preset_for(protocol))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_one_step_on_a_tiny_clip(tiny: CLIP, method: str) -> None:
    spec = get_method(method)
    options = load_config(spec.preset_for("base2novel"), [o for o in spec.demo_overrides]).method.options
    teacher = official_teacher_for(method, tiny, options)  # a distilling method: its official teacher design
    learner = create_learner(method, tiny, ["cat", "dog", "sea lion"], options,
                             dataset=DatasetContext("eurosat", "a centered satellite photo of {}."), teacher=teacher)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    if spec.learner.transductive:  # trained on images only: any use of the labels raises
        from mmprompt.methods import NoLabels

        labels = NoLabels(2)
    objective = learner.train()(images, labels)
    assert torch.isfinite(objective.total) and objective.terms
    if learner.trainable_parameters():
        objective.total.backward()
        assert any(p.grad is not None for p in learner.trainable_parameters())
    with torch.no_grad():
        assert learner.eval()(images).shape == (2, 3)


def test_an_alias_can_name_its_own_presets() -> None:
    from mmprompt.protocols.common import default_preset

    assert load_config(default_preset("dept_coop", "base2novel")).method.options["base"] == "coop"
    assert load_config(default_preset("dept", "base2novel")).method.options["base"] == "maple"


# ----- 9. one trainable container; the former name is an alias ----------------------------------------------
class FormerContract(CoOp):
    """A learner written against the former contract: it adds to ``self.prompt``."""

    method = "former"

    def build_prompts(self) -> None:
        super().build_prompts()
        self.prompt.gain = torch.nn.Parameter(torch.full((), 2.0))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return super().logits(images) * self.prompt.gain


def test_the_former_container_name_is_an_alias_not_a_second_module(tiny: CLIP) -> None:
    learner = FormerContract(tiny, ["red car", "dog"], CoOpConfig(n_ctx=2))
    assert learner.prompt is learner.trainable and "prompt" not in learner._modules
    assert list(learner.named_trainable()) == ["trainable.ctx", "trainable.gain"]
    assert not any(k.startswith("prompt.") for k in learner.state_dict())
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["trainable.ctx", "trainable.gain"]
    images = torch.randn(2, 3, 32, 32)
    learner.objective(images, torch.tensor([0, 1])).total.backward()
    assert learner.prompt.gain.grad is not None and learner.trainable.ctx.grad is not None
    saved = {k: v + 1 for k, v in learner.prompt_state_dict().items()}
    learner.load_prompt_state_dict({legacy_name(k): v for k, v in saved.items()})  # names of older checkpoints
    assert_same_prompts(learner.prompt_state_dict(), saved)
    with pytest.raises(ValueError, match=r"missing: \['trainable.gain'\]; unexpected: \['prompt.scale'\]"):
        learner.load_prompt_state_dict({"prompt.ctx": saved["trainable.ctx"], "prompt.scale": saved["trainable.gain"]})


def test_replacing_the_container_is_refused(tiny: CLIP) -> None:
    class Replacing(CoOp):
        def build_prompts(self) -> None:
            self.prompt = torch.nn.Module()

    with pytest.raises(TypeError, match="alias of self.trainable"):
        Replacing(tiny, ["dog"], CoOpConfig(n_ctx=2))


# ----- 10. a method that wraps another learner composes with it ---------------------------------------------
class Passthrough(LearnerWrapper):
    method = "passthrough"

    def inner_method(self) -> tuple[str, MethodConfig]:
        return "kgcoop", make_config("kgcoop", {"n_ctx": 2})


class Gained(LearnerWrapper):
    method = "gained"
    inner_slot = "student"

    def inner_method(self) -> tuple[str, MethodConfig]:
        return "maple", make_config("maple", {"n_ctx": 2, "depth": 2})

    def build_wrapper(self) -> None:
        self.trainable.gain = torch.nn.Parameter(torch.full((), 2.0))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.recording() as seen:
            similarity = self.inner.logits(images)
        self.seen = (seen.one("text"), seen.one("image"))
        return similarity * self.trainable.gain


def test_a_wrapper_that_overrides_nothing_is_its_inner_learner(tiny: CLIP) -> None:
    names = ["red car", "dog", "cat"]
    wrapper = Passthrough(tiny, names, MethodConfig())
    plain = create_learner("kgcoop", tiny, names, {"n_ctx": 2})
    plain.load_prompt_state_dict(Passthrough.inner_state(wrapper.prompt_state_dict()))
    assert list(wrapper.named_trainable()) == ["trainable.base.trainable.ctx"] and wrapper.inner is wrapper.trainable.base
    assert sum(1 for m in wrapper.modules() if isinstance(m, CLIP)) == 1  # the frozen CLIP is shared, held once
    assert not any(".clip." in k for k in wrapper.state_dict())
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    torch.testing.assert_close(wrapper(images), plain(images), rtol=0, atol=0)
    ours, theirs = wrapper.objective(images, labels), plain.objective(images, labels)
    assert set(ours.terms) == set(theirs.terms) == {"ce", "kg"}
    for k in theirs.terms:
        torch.testing.assert_close(ours.terms[k], theirs.terms[k], rtol=0, atol=0)
    assert [(len(p), m) for p, m, *_ in wrapper.parameter_groups()] == [(1, 1.0)]
    wrapper.set_classnames(["dog"])
    assert wrapper.inner.classnames == ["dog"] and wrapper(images).shape == (3, 1)


def test_a_wrapper_adds_its_own_tensors_after_the_inner_learners(tiny: CLIP) -> None:
    wrapper = Gained(tiny, ["red car", "dog"], MethodConfig())
    names = list(wrapper.named_trainable())
    inner = [n for n in names if n != "trainable.gain"]
    assert len(inner) == len(names) - 1 and all(n.startswith("trainable.student.trainable.") for n in inner)
    assert wrapper.own_parameters() == [wrapper.trainable.gain]
    groups = wrapper.parameter_groups()
    assert groups[-1] == ([wrapper.trainable.gain], 1.0) and len(groups[0][0]) == len(inner)
    images = torch.randn(2, 3, 32, 32)
    logits = wrapper(images)
    text, image = wrapper.seen
    torch.testing.assert_close(logits, wrapper.inner.logits_from(image, text) * 2.0)
    assert "text_features" not in wrapper.inner.__dict__ and "image_features" not in wrapper.inner.__dict__


def test_a_wrappers_inner_transform_gets_exactly_its_own_gradients(tiny: CLIP) -> None:
    wrapper = Gained(tiny, ["red car", "dog"], MethodConfig())
    params = wrapper.trainable_parameters()
    assert params[0] is wrapper.trainable.gain  # a direct parameter of the container comes before the inner's
    got: dict[str, list] = {}
    object.__setattr__(wrapper.inner, "transform_gradients", got.update)
    grads = [torch.full_like(p, float(i)) for i, p in enumerate(params)]
    wrapper.transform_gradients({"kl": grads})
    inner = wrapper.inner.trainable_parameters()
    assert len(got["kl"]) == len(inner) == len(params) - 1
    position = {id(p): i for i, p in enumerate(params)}
    assert all(g is grads[position[id(p)]] for g, p in zip(got["kl"], inner, strict=True))
