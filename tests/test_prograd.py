"""ProGrad beyond its reference file (whose parity is in test_parity.py): the context-init quirk, ProGrad's own
templates, the objective, the projection decision, and the projection's exactness under gradient accumulation
and data parallelism (the projection of the step's accumulated, reduced gradients = one large batch's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

from mmprompt.checkpoint import load_prompts
from mmprompt.cli import main
from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.data.templates import TEMPLATES
from mmprompt.engine.clip_source import resolve_clip
from mmprompt.engine.run import build_learner, load_splits, run_experiment
from mmprompt.engine.train import backward_objective, finish_gradients, train
from mmprompt.methods import DatasetContext, config_from_official, create_learner, get_method
from mmprompt.methods.prograd import PROGRAD_TEMPLATES, ProGrad, project_conflicting
from mmprompt.parity import load_reference, reference_clip
from test_engine_support import (
    fast_config,
    free_port,
    join_process_group,
    make_data_root,
    one_thread,
    save_tiny_clip,
)

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "prograd_reference.npz"
NAMES = ["sea_or_lake", "Forest", "dog"]
EUROSAT = DatasetContext("eurosat", TEMPLATES["eurosat"])
PETS = DatasetContext("oxford_pets", TEMPLATES["oxford_pets"])


@pytest.fixture(scope="module")
def ref():  # noqa: ANN201
    return load_reference(REFERENCE)


@pytest.fixture(scope="module")
def ref_clip(ref) -> CLIP:  # noqa: ANN001
    return reference_clip(ref)


def embed(clip: CLIP, learner: ProGrad, text: str) -> torch.Tensor:
    with torch.no_grad():
        return clip.token_embedding(learner.tokenize([text]))[0].float()


# ------------------------------------------------------------------------------------------ init and templates
def test_init_is_the_template_with_zero_leading_rows(clip: CLIP) -> None:
    learner = create_learner("prograd", clip, NAMES, dataset=EUROSAT)
    ctx = learner.trainable.ctx.detach()
    init = "a centered satellite photo of"  # 5 words = 5 tokens
    assert ctx.shape == (16, clip.config.text.width)
    assert torch.equal(ctx[:11], torch.zeros(11, ctx.shape[1]))
    torch.testing.assert_close(ctx[11:], embed(clip, learner, init)[1:6])
    assert learner.prefix_text == " ".join(["X"] * 11) + " " + init
    # the prompt at init is the template's text after 11 zero rows: "[SOS] 0 x11 a centered ... of dog . [EOS]"
    prompts = learner.assemble(learner.trainable.ctx).detach()
    want = embed(clip, learner, " ".join(["X"] * 11) + f" {init} dog.")
    want[1:12] = 0
    torch.testing.assert_close(prompts[2], want)


def test_word_token_mismatch_leaves_the_last_init_token_as_text(clip: CLIP) -> None:
    learner = create_learner("prograd", clip, NAMES, dataset=PETS)
    init = "a type of pet, a photo of a"  # 8 words, 9 tokens: the last "a" is not replaced
    tokens = embed(clip, learner, init)
    ctx = learner.trainable.ctx.detach()
    assert torch.equal(ctx[:8], torch.zeros(8, ctx.shape[1]))
    torch.testing.assert_close(ctx[8:], tokens[1:9])  # "a type of pet , a photo of"
    prompts = learner.assemble(learner.trainable.ctx).detach()
    want = embed(clip, learner, " ".join(["X"] * 8) + f" {init} dog.")
    want[1:9] = 0
    torch.testing.assert_close(prompts[2], want)
    a_token = learner.tokenizer.encode("a")[0]
    assert int(learner.tokenize(["X " * 8 + init + " dog."])[0, 17]) == a_token  # fixed text after the context


def test_prompt_text_follows_the_dataset_and_keeps_the_context(clip: CLIP) -> None:
    learner = create_learner("prograd", clip, NAMES, dataset=EUROSAT)
    ctx = learner.trainable.ctx.detach().clone()
    learner.set_classnames(["cat", "dog"], dataset=PETS)  # the official model is built for the target dataset
    assert learner.prefix_text == " ".join(["X"] * 8) + " a type of pet, a photo of a"
    assert torch.equal(learner.trainable.ctx.detach(), ctx)
    assert learner.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_vit_b16_trains_8192_context_values() -> None:
    with torch.device("meta"):
        vit = CLIP(get_config("ViT-B/16"))
    learner = create_learner("prograd", vit.to_empty(device="cpu"), ["cat", "dog"], dataset=PETS)
    assert [(n, p.numel()) for n, p in learner.named_parameters() if p.requires_grad] == [("trainable.ctx", 8192)]


def test_front_position_puts_the_class_name_first(clip: CLIP) -> None:
    learner = create_learner("prograd", clip, NAMES, {"class_token_position": "front"}, dataset=EUROSAT)
    prompts = learner.assemble(learner.trainable.ctx).detach()
    dog = learner.tokenizer.encode("dog")
    assert len(dog) == 1
    torch.testing.assert_close(prompts[2, 1], embed(clip, learner, "dog")[1])  # [SOS] dog ctx x16 . [EOS]
    torch.testing.assert_close(prompts[2, 2:18], learner.trainable.ctx.detach())
    torch.testing.assert_close(prompts[2, 18], embed(clip, learner, ".")[1])


def test_prograd_templates_cover_the_datasets_and_are_not_coops() -> None:
    assert set(PROGRAD_TEMPLATES) == set(TEMPLATES) - {"mmprompt_demo"}  # canonical keys
    assert PROGRAD_TEMPLATES["oxford_pets"] == "a type of pet, a photo of a {}."
    assert PROGRAD_TEMPLATES["dtd"] == "a texture of {}."
    assert PROGRAD_TEMPLATES["food101"] == "a type of food, a photo of {}."
    assert PROGRAD_TEMPLATES["oxford_pets"] != TEMPLATES["oxford_pets"]


def test_teacher_uses_prograds_template_once_per_class_list(clip: CLIP, monkeypatch: pytest.MonkeyPatch) -> None:
    learner = create_learner("prograd", clip, NAMES, dataset=PETS).train()
    calls: list[int] = []
    original = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda t, **kw: calls.append(len(t)) or original(t, **kw))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    first, second = learner(images, labels), learner(images, labels)
    assert calls == [len(NAMES)]
    tokens = learner.tokenize([f"a type of pet, a photo of a {n.replace('_', ' ')}." for n in NAMES])
    torch.testing.assert_close(first.tensors["teacher/text_features"], F.normalize(original(tokens), dim=-1))
    torch.testing.assert_close(first.terms["kl"], second.terms["kl"])
    learner.set_classnames(["cat", "dog"], dataset=PETS)
    learner(images, torch.tensor([0, 1]))
    assert calls == [len(NAMES), 2]


def test_template_fallbacks_and_override(clip: CLIP) -> None:
    demo = create_learner("prograd", clip, NAMES, dataset=DatasetContext("mmprompt_demo", "a photo of a {}."))
    assert demo.prograd_template() == "a photo of a {}."
    assert create_learner("prograd", clip, NAMES).prograd_template() == "a photo of a {}."
    own = create_learner("prograd", clip, NAMES, {"template": "a blurry photo of {}."}, dataset=PETS)
    assert own.prograd_template() == "a blurry photo of {}."
    assert own.prefix_text == " ".join(["X"] * 12) + " a blurry photo of"
    with pytest.raises(ValueError, match="ending in"):
        create_learner("prograd", clip, NAMES, {"template": "{} texture."})
    assert create_learner("prograd", clip, NAMES, {"template": "{} texture.", "ctx_init": False}).trainable.ctx.shape[0] == 16


def test_config_errors_and_official_keys(clip: CLIP) -> None:
    with pytest.raises(ValueError, match="at least the 8 words"):
        create_learner("prograd", clip, NAMES, {"n_ctx": 4}, dataset=PETS)
    with pytest.raises(ValueError, match="crashes"):
        create_learner("prograd", clip, NAMES, {"class_token_position": "middle"})
    with pytest.raises(ValueError, match="ctx_init false"):
        create_learner("prograd", clip, NAMES, {"class_specific": True})
    with pytest.raises(ValueError, match="temperature"):
        create_learner("prograd", clip, NAMES, {"temperature": 0})
    csc = create_learner("prograd", clip, NAMES, {"class_specific": True, "ctx_init": False, "n_ctx": 4})
    assert csc.trainable.ctx.shape == (3, 4, clip.config.text.width)
    with pytest.raises(ValueError, match="tied to the class names"):
        csc.set_classnames(["cat", "dog"])
    official = {"DATASET.NAME": "OxfordPets", "TRAINER.COOP.N_CTX": 12, "TRAINER.COOP.CTX_INIT": True,
                "TRAINER.COOP.CSC": True, "TRAINER.COOP.CLASS_TOKEN_POSITION": "front", "TRAINER.COOP.PREC": "fp16",
                "LOSS.NAME": "prograd", "LOSS.T": 2.0, "LOSS.LAMBDA": 0.8}
    cfg = config_from_official("prograd", official)
    assert (cfg.n_ctx, cfg.ctx_init, cfg.class_specific, cfg.class_token_position, cfg.temperature, cfg.lam) == (
        12, True, False, "front", 2.0, 0.8)  # CSC is ignored with CTX_INIT, as officially
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("prograd", {"LOSS.ALPHA": 1.0})
    with pytest.raises(ValueError, match="LOSS.NAME"):
        config_from_official("prograd", {"LOSS.NAME": "ce"})


# ------------------------------------------------------------------------------------------------ objective
def test_objective_descends_xe_and_steers_with_the_soft_cross_entropy(clip: CLIP) -> None:
    learner = create_learner("prograd", clip, NAMES, {"temperature": 2.0}, dataset=EUROSAT).train()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 1])
    objective = learner(images, labels)
    assert set(objective.terms) == {"xe", "kl"} and set(objective.grad_terms) == {"kl"}
    assert objective.total is objective.terms["xe"]
    student = learner.eval()(images)
    torch.testing.assert_close(objective.terms["xe"], F.cross_entropy(student, labels))
    # the teacher: the frozen CLIP's own image forward (the learner reuses CoOp's, which is the same)
    text = objective.tensors["teacher/text_features"]
    teacher = learner.logit_scale() * learner.teacher_image_features(images) @ text.t()
    torch.testing.assert_close(objective.tensors["teacher/logits"], teacher)
    soft = -(F.softmax(teacher / 2, dim=-1) * F.log_softmax(student / 2, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(objective.terms["kl"], 4 * soft)  # T^2 x soft cross-entropy, not a KL value
    kl_true = 4 * F.kl_div(F.log_softmax(student / 2, -1), F.softmax(teacher / 2, -1), reduction="batchmean")
    assert float(objective.terms["kl"].detach()) > float(kl_true.detach()) + 1e-3


def test_projection_decision() -> None:
    h = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    conflicting = torch.tensor([[-2.0, 1.0], [0.5, 0.0]])
    out, cos = project_conflicting(conflicting, h, 1.0)
    assert float(cos) < 0
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0], [0.5, 0.0]]))  # the component along h is removed
    assert abs(float((out * h).sum())) < 1e-7
    half, _ = project_conflicting(conflicting, h, 0.5)
    torch.testing.assert_close(half, torch.tensor([[-1.0, 1.0], [0.5, 0.0]]))  # lambda scales what is removed
    for g in (torch.tensor([[2.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, 3.0], [1.0, 0.0]])):  # cos > 0, cos = 0
        out, cos = project_conflicting(g, h, 1.0)
        assert float(cos) >= 0 and torch.equal(out, g)
    for bad in (torch.zeros(2, 2), torch.full((2, 2), float("inf"))):  # undefined cosine: g unchanged, finite
        out, _ = project_conflicting(conflicting, bad, 1.0)
        assert torch.equal(out, conflicting)


def _load_case(learner: ProGrad, ref, case: str) -> None:  # noqa: ANN001
    learner.load_prompt_state_dict({"trainable.ctx": torch.from_numpy(ref.arrays[f"{case}/param/prompt_learner.ctx"])})


def _step_gradient(learner: ProGrad, images: torch.Tensor, labels: torch.Tensor, parts: int) -> torch.Tensor:
    """p.grad after the engine's backward over ``parts`` micro-batches and the transform at the step."""
    learner.zero_grad(set_to_none=True)
    held: dict = {}
    params = learner.trainable_parameters()
    for idx in torch.arange(len(labels)).chunk(parts):
        backward_objective(learner(images[idx], labels[idx]), params, len(idx) / len(labels), held)
    finish_gradients(learner, held)
    return learner.trainable.ctx.grad.detach().clone()


def test_accumulated_projection_equals_the_large_batch(ref, ref_clip: CLIP) -> None:
    learner = create_learner("prograd", ref_clip, ref.meta["classnames"], dataset=EUROSAT).train()
    _load_case(learner, ref, "prograd")
    images = torch.from_numpy(ref.arrays["images"])[[0, 1, 2, 0]]
    labels = torch.from_numpy(ref.arrays["labels"])[[0, 1, 2, 0]]
    whole = _step_gradient(learner, images, labels, 1)
    assert float(learner.last_cosines["trainable.ctx"]) < 0  # the step's gradients conflict: projected
    accumulated = _step_gradient(learner, images, labels, 2)
    scale = float(whole.abs().max())
    torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-5 * scale)  # float32 summation order only
    # projecting each micro-batch and summing would differ: the test can tell the two apart
    per_micro = torch.zeros_like(whole)
    for idx in torch.arange(4).chunk(2):
        per_micro += 0.5 * _step_gradient(learner, images[idx], labels[idx], 1)
    assert float((per_micro - whole).abs().max()) > 0.1 * scale


def test_transform_uses_the_step_gradients_of_the_reference(ref, ref_clip: CLIP) -> None:
    learner = create_learner("prograd", ref_clip, ref.meta["classnames"], dataset=EUROSAT).train()
    images, labels = torch.from_numpy(ref.arrays["images"]), torch.from_numpy(ref.arrays["labels"])
    for case in ("prograd", "prograd_aligned"):
        _load_case(learner, ref, case)
        grad = _step_gradient(learner, images, labels, 1)
        want = ref.meta["cases"][case]["projection"]["prompt_learner.ctx"]
        cos = float(learner.last_cosines["trainable.ctx"])
        assert (cos < 0) == want["projected"] and cos == pytest.approx(want["cos_ce_kl"], rel=1e-4)
        expected = torch.from_numpy(ref.arrays[f"{case}/grad/prompt_learner.ctx"])
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


# ------------------------------------------------------------------------------- the engine: accumulation, DDP
# 8 training images; with the random context init this tiny run has both conflicting and agreeing steps
PRESET_EXTRA = ["method.ctx_init=false", "data.shots=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("prograd_engine")
    return make_data_root(base / "data"), save_tiny_clip(base / "tiny.pt")


def test_engine_accumulation_matches_larger_batch(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    root, weights = env
    model, _ = resolve_clip(weights, "quick_gelu", "cpu")
    results, cosines = [], []
    for extra in (["optim.batch_size=4"], ["optim.batch_size=2", "optim.grad_accum=2"]):
        cfg = fast_config(root, weights, "prograd_b2n", extra=[*PRESET_EXTRA, *extra])
        splits = load_splits(cfg)
        torch.manual_seed(0)
        learner = build_learner(cfg, model, splits)
        seen: list[float] = []
        original = learner.transform_gradients
        monkeypatch.setattr(learner, "transform_gradients",
                            lambda held, f=original, s=seen: (f(held), s.append(float(f.__self__.last_cosines[
                                "trainable.ctx"]))))
        train(learner, splits.train, cfg, None, image_dir=splits.image_dir)
        results.append(learner.prompt_state_dict())
        cosines.append(seen)
    assert len(cosines[0]) == len(cosines[1]) == 6  # 8 images, batch 4: 2 steps x 3 epochs
    assert any(c < 0 for c in cosines[0]) and any(c > 0 for c in cosines[0])  # projected and plain steps
    assert cosines[1] == pytest.approx(cosines[0], rel=1e-4, abs=1e-6)
    torch.testing.assert_close(results[1]["trainable.ctx"], results[0]["trainable.ctx"], rtol=1e-5, atol=1e-6)


def _ddp_worker(rank: int, world: int, port: int, root: str, weights: str, out: str, cache: str) -> None:
    ctx = join_process_group(rank, world, port, cache)
    try:
        clip, info = resolve_clip(Path(weights), "quick_gelu", ctx.device)
        cfg = fast_config(Path(root), Path(weights), "prograd_b2n", extra=[*PRESET_EXTRA, "optim.batch_size=4"])
        run_experiment(cfg, clip, info, Path(out), train_splits=load_splits(cfg, ctx=ctx), ctx=ctx, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMPROMPT_CACHE", str(cache))
    root, weights = env
    clip, info = resolve_clip(weights, "quick_gelu", "cpu")
    cfg = fast_config(root, weights, "prograd_b2n", extra=[*PRESET_EXTRA, "optim.batch_size=4"])
    cosines: list[float] = []
    original = ProGrad.transform_gradients

    def recording(self: ProGrad, held) -> None:  # noqa: ANN001
        original(self, held)
        cosines.append(float(self.last_cosines["trainable.ctx"]))

    monkeypatch.setattr(ProGrad, "transform_gradients", recording)
    run_experiment(cfg, clip, info, tmp_path / "single", train_splits=load_splits(cfg), progress=False)
    monkeypatch.undo()
    assert any(c < 0 for c in cosines) and any(c > 0 for c in cosines)  # the run has projected and plain steps
    monkeypatch.setenv("MMPROMPT_CACHE", str(cache))
    mp.spawn(_ddp_worker, args=(2, free_port(), str(root), str(weights), str(tmp_path / "ddp"), str(cache)),
             nprocs=2, join=True)
    one = load_file(str(tmp_path / "single" / "prompts.safetensors"))
    two = load_file(str(tmp_path / "ddp" / "prompts.safetensors"))
    torch.testing.assert_close(two["trainable.ctx"], one["trainable.ctx"], rtol=1e-5, atol=1e-6)
    logs = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert all("kl" in e for e in logs if e["event"] == "epoch")


# ------------------------------------------------------------------------------------ checkpoints and commands
def test_import_official_gives_reference_logits(ref, ref_clip: CLIP, tmp_path: Path) -> None:
    folder = tmp_path / "official" / "prompt_learner"
    folder.mkdir(parents=True)
    state = {"ctx": torch.from_numpy(ref.arrays["prograd/param/prompt_learner.ctx"]),
             "token_prefix": torch.zeros(5, 1, 64), "token_suffix": torch.zeros(5, 60, 64)}
    torch.save({"state_dict": state, "epoch": 100, "optimizer": {}, "scheduler": {}}, folder / "model.pth.tar-100")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "official"), "--method", "prograd", "-o", str(out),
                 "--arch", "tiny-parity"]) == 0
    learner = load_prompts(out, ref_clip, classnames=ref.meta["classnames"], dataset=EUROSAT).eval()
    assert isinstance(learner, ProGrad) and learner.config.ctx_init
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays["prograd/logits"]), rtol=1e-4, atol=1e-4)


def test_row_presets_and_speed_command(capsys: pytest.CaptureFixture[str]) -> None:
    from mmprompt.config import load_config

    spec = get_method("prograd")
    assert (spec.preset_for("base2novel"), spec.preset_for("few-shot")) == ("prograd_b2n", "prograd_fs")
    b2n = load_config("prograd_b2n", dataset="eurosat")
    assert (b2n.optim.lr, b2n.optim.epochs, b2n.optim.batch_size, b2n.data.subsample) == (0.002, 100, 32, "base")
    assert load_config("prograd_b2n", dataset="imagenet").optim.epochs == 50
    for preset, epochs in (("prograd_fs", 200), ("prograd_fs_ep100", 100), ("prograd_fs_ep50", 50)):
        assert load_config(preset, dataset="caltech101").optim.epochs == epochs
        assert load_config(preset, dataset="caltech101").method_config().lam == 1.0
    for dataset in ("oxford_flowers", "dtd", "eurosat"):
        assert load_config("prograd_fs", dataset=dataset).method_config().lam == 0.8
        assert load_config("prograd_fs_ep100", dataset=dataset).method_config().lam == 1.0
    assert main(["speed", "--method", "prograd", "--arch", "tiny", "--random-weights", "--classes", "4", "--steps", "1",
                 "--warmup", "0", "--eval-images", "8", "--eval-batch", "8", "--threads", "1", "--no-isolate",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["method"] == "prograd"
    for path in ("default", "reference"):
        result = report["results"][0][path]
        assert not result["error"] and result["config"]["lam"] == 1.0 and result["train_step_s"] > 0


def test_train_on_the_demo_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmprompt.demo.world import generate_demo_dataset

    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    generate_demo_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--method", "prograd", "--dataset", "mmprompt_demo", "--data-root", str(tmp_path / "data"),
                 "--clip", "demo", "--output", str(run), "--device", "cpu", "--no-progress", "--num-workers", "0",
                 "--shots", "2", "--set", "optim.epochs=1"]) == 0
    epochs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert any(e.get("event") == "epoch" and {"xe", "kl"} <= set(e) for e in epochs)
    assert (run / "prompts.safetensors").is_file()
