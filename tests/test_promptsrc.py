"""PromptSRC beyond its reference file (its parity with the official code, GPA included, is in
test_parity.py): the 60-template raw-averaged teacher computed once per class list, the objective's formula,
the text-context quirk, Gaussian prompt aggregation with an exact resume, import-official, presets, the demo
and the speed command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmprompt.checkpoint import load_prompts, read_prompt_meta, save_prompts
from mmprompt.cli import main
from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.config import load_config
from mmprompt.engine.checkpoint import load_state, save_state, state_path
from mmprompt.engine.run import build_learner, load_splits
from mmprompt.engine.train import train
from mmprompt.methods import config_from_official, create_learner, get_method
from mmprompt.methods.promptsrc import TEACHER_TEMPLATES, PromptSRC, gpa_weights
from mmprompt.parity import load_reference, reference_clip
from test_engine_support import (
    assert_same_prompts,
    fast_config,
    make_data_root,
    official_custom_clip_state,
    one_thread,
    save_tiny_clip,
)

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "promptsrc_reference.npz"
NAMES = ["sea_or_lake", "Forest", "dog"]
SMALL = {"depth_text": 2, "depth_vision": 2}


@pytest.fixture(scope="module")
def ref():  # noqa: ANN201
    return load_reference(REFERENCE)


def _perturb(learner: PromptSRC, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------------------------------- teacher
def test_templates_are_the_references_60(ref) -> None:  # noqa: ANN001
    assert len(TEACHER_TEMPLATES) == 60 and len(set(TEACHER_TEMPLATES)) == 60
    assert list(TEACHER_TEMPLATES) == ref.meta["teacher_templates"]
    assert all(t.count("{}") == 1 for t in TEACHER_TEMPLATES)


def test_teacher_is_the_raw_mean_over_60_templates_encoded_once_per_class_list(
    clip: CLIP, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = create_learner("promptsrc", clip, NAMES, SMALL).train()
    calls: list[int] = []
    original = clip.encode_text
    monkeypatch.setattr(clip, "encode_text",
                        lambda tokens, **kw: calls.append(len(tokens)) or original(tokens, **kw))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    first = learner(images, labels)
    learner(images, labels)
    assert calls == [len(NAMES)] * 60  # 60 templates x the class list, once for both steps
    # independently: the full-context features of every template, averaged before normalising
    with torch.no_grad():
        raw = torch.stack([original(learner.tokenize([t.format(n.replace("_", " ")) for n in NAMES]), truncate=False)
                           for t in TEACHER_TEMPLATES]).mean(0)
    torch.testing.assert_close(first.tensors["teacher/text_features"], raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.tensors["teacher/text_features_normalized"], F.normalize(raw, dim=-1),
                               rtol=1e-5, atol=1e-6)
    # the usual (normalise-average-renormalise) ensemble is a different teacher
    assert not torch.allclose(F.normalize(raw, dim=-1), learner.teacher_text_features(TEACHER_TEMPLATES), atol=1e-4)
    calls.clear()
    learner.set_classnames(["cat", "dog"])
    learner(images, torch.tensor([0, 1]))
    learner(images, torch.tensor([0, 1]))
    assert calls == [2] * 60


def _loss_and_grads(learner: PromptSRC, steps: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 2])
    sgd = torch.optim.SGD(learner.trainable_parameters(), lr=0.01, momentum=0.9)
    losses, grads = [], []
    for _ in range(steps):
        sgd.zero_grad(set_to_none=True)
        objective = learner(images, labels)
        objective.total.backward()
        losses.append(objective.total.detach())
        grads.append([p.grad.clone() for p in learner.trainable_parameters()])
        sgd.step()
    return losses, grads


def test_teacher_text_is_float32_inside_mixed_precision(clip: CLIP) -> None:
    learner = create_learner("promptsrc", clip, NAMES, SMALL).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = learner(images, labels).tensors["teacher/text_features"]
    learner.set_classnames(NAMES)  # clears the cache
    plain = learner(images, labels).tensors["teacher/text_features"]
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


class _Reencoding(PromptSRC):
    """The teacher text re-encoded from the 60 templates at every step (no cache)."""

    def teacher_text(self) -> torch.Tensor:
        self._teacher_cache.clear()
        return super().teacher_text()


def test_cached_teacher_gives_the_same_losses_and_gradients_as_reencoding_every_step(clip: CLIP) -> None:
    config = get_method("promptsrc").config(**SMALL)
    torch.manual_seed(3)
    cached = PromptSRC(clip, NAMES, config).train()
    torch.manual_seed(3)
    fresh = _Reencoding(clip, NAMES, config).train()
    assert_same_prompts(cached.prompt_state_dict(), fresh.prompt_state_dict())
    losses_a, grads_a = _loss_and_grads(cached, 3)
    losses_b, grads_b = _loss_and_grads(fresh, 3)
    for a, b in zip(losses_a, losses_b, strict=True):
        assert torch.equal(a, b)
    for step_a, step_b in zip(grads_a, grads_b, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            assert torch.equal(a, b)
    assert any(g.abs().sum() > 0 for g in grads_a[0])


# -------------------------------------------------------------------------------------------- objective
def test_objective_formula(clip: CLIP) -> None:
    learner = create_learner("promptsrc", clip, NAMES, {**SMALL, "text_loss_weight": 3.0,
                                                        "image_loss_weight": 2.0}).train()
    _perturb(learner)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 0, 1])
    o = learner(images, labels)
    assert set(o.terms) == {"ce", "scl_text_l1", "scl_image_l1", "scl_logits_kl", "scl_logits_kl_sum"}
    t = o.terms
    torch.testing.assert_close(o.total, t["ce"] + 3.0 * t["scl_text_l1"] + 2.0 * t["scl_image_l1"]
                               + t["scl_logits_kl"])
    with torch.no_grad():
        student = learner.eval()(images)
        zs_image = F.normalize(clip.encode_image(images), dim=-1)
    torch.testing.assert_close(o.logits.detach(), student)
    torch.testing.assert_close(t["ce"], F.cross_entropy(student, labels))
    ts = o.tensors
    torch.testing.assert_close(ts["teacher/image_features"], zs_image)
    teacher_logits = clip.logit_scale.exp() * zs_image @ ts["teacher/text_features_normalized"].t()
    torch.testing.assert_close(ts["teacher/logits"], teacher_logits)
    torch.testing.assert_close(t["scl_text_l1"], (ts["student/text_features"]
                                                  - ts["teacher/text_features_normalized"]).abs().mean())
    torch.testing.assert_close(t["scl_image_l1"], (ts["student/image_features"] - zs_image).abs().mean())
    p_z, p_s = teacher_logits.softmax(-1), student.softmax(-1)
    kl_sum = (p_z * (p_z.log() - p_s.log())).sum()
    torch.testing.assert_close(t["scl_logits_kl_sum"], kl_sum, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(t["scl_logits_kl"], kl_sum / (4 * len(NAMES)), rtol=1e-4, atol=1e-7)
    # the teachers carry no gradient: a term of the total that depends only on them would be constant
    assert not ts["teacher/logits"].requires_grad and not ts["teacher/image_features"].requires_grad


def test_text_context_init_quirk(clip: CLIP) -> None:
    two = create_learner("promptsrc", clip, NAMES, {**SMALL, "n_ctx_text": 2})
    tokens = two.tokenize(["a photo of a dog."])
    with torch.no_grad():
        words = clip.token_embedding(tokens)[0]
    torch.testing.assert_close(two.trainable.text_ctx, words[1:3])  # "a photo" is learned
    torch.testing.assert_close(two.token_suffix[2, :3], words[3:6])  # "of a" stays, then "dog"
    five = create_learner("promptsrc", clip, NAMES, {**SMALL, "n_ctx_text": 5})
    assert five.prefix_text == "X X X X X"
    assert not torch.allclose(five.trainable.text_ctx[:4], words[1:5])
    assert float(five.trainable.text_ctx.detach().std()) == pytest.approx(0.02, rel=0.3)


def test_official_config_mapping(ref) -> None:  # noqa: ANN001
    cfg = config_from_official("promptsrc", ref.meta["cases"]["promptsrc"]["official_config"])
    assert (cfg.n_ctx_text, cfg.n_ctx_vision, cfg.depth_text, cfg.depth_vision) == (4, 4, 9, 9)
    assert (cfg.text_loss_weight, cfg.image_loss_weight, cfg.gpa_mean, cfg.gpa_std) == (25.0, 10.0, 15.0, 1.0)
    assert config_from_official("promptsrc", {"PROMPT_DEPTH_VISION": 0}).n_ctx_vision == 0
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("promptsrc", {"GPA_MEANS": 3})
    for bad in ({"gpa_std": 0}, {"text_loss_weight": -1}, {"n_ctx_text": 0}, {"gpa_mean": "x"}):
        with pytest.raises(ValueError, match="promptsrc"):
            create_learner("promptsrc", CLIP(get_config("tiny")), NAMES, {**SMALL, **bad})


# ---------------------------------------------------------------------------------------------------- GPA
@pytest.mark.parametrize("case", ["promptsrc", "promptsrc_gpa"])
def test_gpa_weights_match_the_reference(ref, case: str) -> None:  # noqa: ANN001
    spec = ref.meta["cases"][case]
    official = spec["official_config"]
    weights = gpa_weights(spec["optim"]["MAX_EPOCH"], official["GPA_MEAN"], official["GPA_STD"])
    assert weights.dtype == torch.float64
    np.testing.assert_allclose(weights.numpy(), ref.arrays[f"{case}/gpa/weights"], rtol=1e-12, atol=0)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-15)


def test_gpa_weights_of_the_other_recipes() -> None:
    xd = gpa_weights(20, 6, 10)  # cross-dataset: nearly flat (spec: 0.055 ... 0.063 ... 0.024)
    assert float(xd[0]) == pytest.approx(0.055, abs=5e-4) and float(xd[-1]) == pytest.approx(0.024, abs=5e-4)
    assert int(xd.argmax()) == 5 and float(xd.max()) == pytest.approx(0.063, abs=5e-4)
    assert int(gpa_weights(50, 45, 5).argmax()) == 44
    far = gpa_weights(2, 45, 1)  # the densities underflow, the normalised weights do not
    assert torch.isfinite(far).all() and float(far[-1]) == pytest.approx(1.0)


def test_gpa_averages_the_prompts_of_every_epoch(clip: CLIP) -> None:
    learner = create_learner("promptsrc", clip, NAMES, {**SMALL, "gpa_mean": 2.0, "gpa_std": 1.0})
    frozen = {k: v.clone() for k, v in clip.state_dict().items()}
    seen = []
    for epoch in range(3):
        _perturb(learner, seed=10 + epoch)
        seen.append(learner.prompt_state_dict())
        learner.on_epoch_end(epoch, 3)
        if epoch < 2:  # the prompts train on between epochs
            assert_same_prompts(learner.prompt_state_dict(), seen[-1])
    w = gpa_weights(3, 2.0, 1.0)
    for name, value in learner.prompt_state_dict().items():
        expected = sum(float(w[e]) * seen[e][name] for e in range(3))
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, seen[-1][name])
    for k, v in clip.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    state = learner.training_state()
    assert int(state["gpa_epochs"]) == 3 and len(state) == 1 + len(seen[0])


def test_gpa_state_errors_are_clear(clip: CLIP) -> None:
    learner = create_learner("promptsrc", clip, NAMES, SMALL)
    with pytest.raises(RuntimeError, match="GPA sum holds 0 epoch"):
        learner.on_epoch_end(2, 4)  # resumed without the GPA state
    learner.on_epoch_end(0, 4)
    state = learner.training_state()
    other = create_learner("promptsrc", clip, NAMES, {**SMALL, "depth_text": 3})
    with pytest.raises(ValueError, match="does not match"):
        other.load_training_state(state)
    with pytest.raises(ValueError, match="unknown keys"):
        learner.load_training_state({**state, "something": torch.zeros(1)})
    learner.load_training_state({})
    assert learner.training_state() == {}


def test_gpa_state_written_before_the_trainable_rename_loads(clip: CLIP) -> None:
    learner = create_learner("promptsrc", clip, NAMES, SMALL)
    _perturb(learner)
    learner.on_epoch_end(0, 4)
    state = learner.training_state()
    assert any(k.startswith("gpa_sum/trainable.") for k in state)
    former = {k.replace("gpa_sum/trainable.", "gpa_sum/prompt."): v for k, v in state.items()}  # the old names
    other = create_learner("promptsrc", clip, NAMES, SMALL)
    other.load_training_state(former)
    assert set(other.training_state()) == set(state)
    for k, v in state.items():
        assert torch.equal(other.training_state()[k], v), k


def _gpa_run(root: Path, weights: Path, run_dir: Path, **kw) -> PromptSRC:  # noqa: ANN003
    """A fresh learner (as a new process builds it) trained by the engine for 4 epochs, GPA 3/1."""
    cfg = fast_config(root, weights, preset="promptsrc_b2n",
                      extra=["optim.epochs=4", "method.depth_text=2", "method.depth_vision=2", "method.gpa_mean=3",
                             "data.shots=1", "optim.lr=0.05"])
    splits = load_splits(cfg)
    torch.manual_seed(0)
    learner = build_learner(cfg, CLIP_CACHE.setdefault("clip", _load(weights)), splits)
    train(learner, splits.train, cfg, run_dir, image_dir=splits.image_dir, progress=False, **kw)
    return learner


CLIP_CACHE: dict[str, CLIP] = {}


def _load(weights: Path) -> CLIP:
    from mmprompt.engine.clip_source import resolve_clip

    return resolve_clip(weights, "quick_gelu", "cpu")[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("promptsrc")
    return make_data_root(base / "data"), save_tiny_clip(base / "tiny.pt")


def test_interrupted_run_resumes_with_its_gpa_sum_bit_identical(
    env: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    root, weights = env
    raw: list[dict[str, torch.Tensor]] = []
    original = PromptSRC.on_epoch_end

    def record(self: PromptSRC, epoch: int, epochs: int) -> None:
        raw.append(self.prompt_state_dict())
        original(self, epoch, epochs)

    monkeypatch.setattr(PromptSRC, "on_epoch_end", record)
    full = _gpa_run(root, weights, tmp_path / "full").prompt_state_dict()
    monkeypatch.setattr(PromptSRC, "on_epoch_end", original)
    # the final prompts are the Gaussian average of the 4 epochs' prompts, not the last epoch's
    w = gpa_weights(4, 3.0, 1.0)
    assert len(raw) == 4
    for name, value in full.items():
        torch.testing.assert_close(value, sum(float(w[e]) * raw[e][name] for e in range(4)), rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, raw[-1][name])

    # stopped after epoch 2 (stop_after_epochs), resumed by a fresh learner
    stopped = _gpa_run(root, weights, tmp_path / "stopped", stop_after_epochs=2)
    assert int(stopped.training_state()["gpa_epochs"]) == 2
    assert load_state(state_path(tmp_path / "stopped"))["epoch"] == 2
    assert_same_prompts(full, _gpa_run(root, weights, tmp_path / "stopped").prompt_state_dict())

    # killed right after epoch 3's state was written, then resumed by a fresh learner
    def crash(epoch: int, _result) -> None:  # noqa: ANN001
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _gpa_run(root, weights, tmp_path / "crashed", on_epoch_end=crash)
    torch.manual_seed(1234)
    assert_same_prompts(full, _gpa_run(root, weights, tmp_path / "crashed").prompt_state_dict())

    # without its GPA sum the state cannot resume: a clear error instead of a silently different result
    _gpa_run(root, weights, tmp_path / "lost", stop_after_epochs=2)
    path = state_path(tmp_path / "lost")
    state = load_state(path)
    state["method_state"] = {}
    save_state(path, state)
    with pytest.raises(RuntimeError, match="GPA sum holds 0 epoch"):
        _gpa_run(root, weights, tmp_path / "lost")


# ---------------------------------------------------------------------------------- checkpoints, import
def test_prompts_work_with_new_class_names(clip: CLIP, tmp_path: Path) -> None:
    learner = create_learner("promptsrc", clip, NAMES, SMALL)
    _perturb(learner)
    out = save_prompts(learner, tmp_path / "ckpt")
    images = torch.randn(2, 3, 32, 32)
    novel = load_prompts(out, clip, classnames=["horse", "frog"]).eval()
    direct = create_learner("promptsrc", clip, ["horse", "frog"], SMALL)
    direct.load_prompt_state_dict(learner.prompt_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(novel(images), direct.eval()(images), rtol=0, atol=0)
    # evaluation never computes the teacher
    assert novel._teacher_cache == {}


def _official_checkpoint(ref, root: Path) -> None:  # noqa: ANN001
    """A Dassl checkpoint of the official PromptSRC model: prompts, frozen CLIP, zero-shot encoder, buffers."""
    state = official_custom_clip_state(ref, "promptsrc", logit_scale=4.0, suffix_length=72)
    for key in [k for k in state if k.startswith("image_encoder.")]:  # the frozen zero-shot image encoder too
        state["prompt_learner.ZS_image_encoder." + key[len("image_encoder."):]] = state[key]
    path = root / "VLPromptLearner" / "model.pth.tar-20"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 20, "optimizer": {}, "scheduler": {}}, path)


def test_import_official_gives_reference_logits(ref, tmp_path: Path) -> None:  # noqa: ANN001
    _official_checkpoint(ref, tmp_path / "official")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "official"), "--method", "promptsrc", "-o", str(out),
                 "--arch", "tiny-parity"]) == 0
    meta = read_prompt_meta(out)
    assert meta["method"] == "promptsrc" and meta["clip"]["imported_from"].endswith("model.pth.tar-20")
    assert (meta["config"]["depth_text"], meta["config"]["depth_vision"]) == (9, 9)
    learner = load_prompts(out, reference_clip(ref), classnames=ref.meta["classnames"]).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays["promptsrc/logits"]), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------- presets, demo, speed
def test_presets_follow_the_recipe_table() -> None:
    spec = get_method("promptsrc")
    b2n = load_config(spec.preset_for("base2novel"))
    assert (b2n.optim.lr, b2n.optim.epochs, b2n.optim.batch_size, b2n.data.subsample) == (0.0025, 20, 4, "base")
    assert (b2n.method.options["depth_text"], b2n.method.options["gpa_mean"], b2n.method.options["gpa_std"]) == (9, 15, 1)
    xd = load_config(spec.preset_for("transfer"))
    assert (xd.data.dataset, xd.optim.epochs, xd.method.options["depth_vision"]) == ("imagenet", 20, 3)
    assert (xd.method.options["gpa_mean"], xd.method.options["gpa_std"]) == (6, 10)
    few = spec.preset_for("few-shot")
    for dataset, gpa in (("imagenet", (30, 30)), ("sun397", (30, 30)), ("eurosat", (45, 5)),
                         ("StanfordCars", (45, 5)), ("oxford_flowers", (45, 5)), ("fgvc_aircraft", (45, 5)),
                         ("dtd", (45, 5))):
        cfg = load_config(few, dataset=dataset)
        assert cfg.optim.epochs == 50
        assert (cfg.method_config().gpa_mean, cfg.method_config().gpa_std) == gpa, dataset


def test_cli_train_on_the_demo_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmprompt.demo import generate_demo_dataset

    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    generate_demo_dataset(tmp_path / "data", seed=0, per_class_train=2, per_class_val=1, per_class_test=1)
    run = tmp_path / "run"
    overrides = [*get_method("promptsrc").demo_overrides, "optim.epochs=2", "method.gpa_mean=2", "data.shots=1",
                 "data.num_workers=0", "log.progress=false"]
    assert main(["train", "--method", "promptsrc", "--dataset", "mmprompt_demo", "--data-root", str(tmp_path / "data"),
                 "--clip", "demo", "--output", str(run), "--device", "cpu", "--no-progress",
                 "--set", *overrides]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and set(metrics["eval"]) == {"base", "novel"}
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["event"] == "epoch"]
    assert len(epochs) == 2 and {"scl_text_l1", "scl_image_l1", "scl_logits_kl"} <= set(epochs[-1])


def test_speed_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--method", "promptsrc", "--random-weights", "--arch", "tiny", "--classes", "10",
                 "--steps", "1", "--warmup", "0", "--no-isolate", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["method"] == "promptsrc"
    assert all(not entry["default"]["error"] for entry in doc["results"])
