"""TCP beyond its reference file (parity with the official code is in test_parity.py): the official
templates per dataset, the teacher computed once per class list, the class-aware tokens written in before
the injection block, the objective, new class names, the text fast paths, import-official, the demo run,
the speed command and Adam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmprompt.checkpoint import load_prompts, read_prompt_meta, save_prompts
from mmprompt.cli import main
from mmprompt.clip.model import CLIP
from mmprompt.config import ConfigError, OptimSection, load_config
from mmprompt.engine.optim import build_optimizer
from mmprompt.methods import DatasetContext, EncoderOptions, config_from_official, create_learner
from mmprompt.methods.tcp import LEARNABLE_TEMPLATES, TEACHER_TEMPLATES
from mmprompt.parity import load_reference, reference_clip

REFERENCE = Path(__file__).parent / "data" / "tcp_reference.npz"
NAMES = ["sea_or_lake", "Forest", "Herbaceous Vegetation Land", "dog", "a much longer class name here"]
EUROSAT = DatasetContext("eurosat", "a centered satellite photo of {}.")
TINY = {"injection_layer": 2}  # the tiny CLIP has 4 text layers


def perturbed(learner):  # noqa: ANN001, ANN201
    torch.manual_seed(3)
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    return learner


def zero_shot(clip: CLIP, learner, template: str, names=NAMES) -> torch.Tensor:  # noqa: ANN001
    tokens = learner.tokenize([template.format(n.replace("_", " ")) for n in names])
    with torch.no_grad():
        return F.normalize(clip.encode_text(tokens).float(), dim=-1)


# ----- templates and teacher ---------------------------------------------------------------------------------
def test_official_templates_per_dataset(clip: CLIP) -> None:
    meta = json.loads(REFERENCE.with_suffix(".json").read_text())["cases"]["tcp"]
    assert (LEARNABLE_TEMPLATES["eurosat"], TEACHER_TEMPLATES["eurosat"]) == (meta["learnable_template"],
                                                                              meta["teacher_template"])
    # the quirks the spec lists: no final period for cars, "an aircraft", ctx over "a photo of a" for UCF/ImageNet
    assert LEARNABLE_TEMPLATES["stanford_cars"] == "X X X X {}, a type of car"
    assert TEACHER_TEMPLATES["fgvc_aircraft"] == "a photo of an aircraft {}."
    assert TEACHER_TEMPLATES["food101"] == "a photo of a {}, a type of food."
    assert LEARNABLE_TEMPLATES["ucf101"] == "a photo of a person doing {}."
    learner = create_learner("tcp", clip, NAMES, TINY, dataset=DatasetContext("dtd", "{} texture."))
    assert (learner.learnable_template(), learner.teacher_template()) == (
        "X X X X {} texture.", "a photo of a {}, a type of texture.")
    custom = DatasetContext("custom_birds", "a bird photo of a {}.")
    learner.set_classnames(NAMES, dataset=custom)  # no official entry: X words and the dataset's own template
    assert (learner.learnable_template(), learner.teacher_template()) == ("X X X X {}.", "a bird photo of a {}.")
    # the suffix after the 4 context positions is the template's own text after "X X X X"
    tokens = learner.tokenize(["X X X X dog."])
    with torch.no_grad():
        expected = clip.token_embedding(tokens)[0, 5:].float()
    torch.testing.assert_close(learner.token_suffix[3], expected)
    with pytest.raises(ValueError, match="needs 4 tokens before the class name"):
        create_learner("tcp", clip, NAMES, {**TINY, "learnable_template": "X X {}."})


def test_teacher_is_encoded_once_per_class_list(clip: CLIP, monkeypatch: pytest.MonkeyPatch) -> None:
    learner = create_learner("tcp", clip, NAMES, TINY, dataset=EUROSAT)
    expected = zero_shot(clip, learner, "a centered satellite photo of {}.")
    calls = []
    original = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda tokens, **kw: calls.append(len(tokens)) or original(tokens, **kw))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    first = learner.train()(images, labels)
    second = learner(images, labels)
    with torch.no_grad():
        learner.eval()(images)
    assert calls == [len(NAMES)]  # the teacher template once: TKE input, kg target and eval share it
    torch.testing.assert_close(first.total, second.total)
    torch.testing.assert_close(first.tensors["teacher/text_features"], expected)
    learner.set_classnames(["cat", "dog"], dataset=EUROSAT)
    learner(images, torch.tensor([0, 1]))
    assert calls == [len(NAMES), 2]


# ----- the class-aware tokens and where they go -------------------------------------------------------------
def test_class_prompts_replace_the_context_before_the_injection_block(clip: CLIP) -> None:
    learner = perturbed(create_learner("tcp", clip, NAMES, TINY, dataset=EUROSAT))
    teacher = learner.teacher_features()
    net = learner.trainable.meta_net
    hidden = net.linear1(teacher)
    tokens = net.linear2(hidden * torch.sigmoid(1.702 * hidden)).reshape(len(NAMES), 4, -1)  # QuickGELU
    torch.testing.assert_close(learner.class_prompts(), tokens)
    # the text tower block by block over the full context, positions 1..4 overwritten before block 2
    x = learner.assemble(learner.trainable.ctx) + clip.positional_embedding
    for i, block in enumerate(clip.transformer.resblocks):
        if i == 2:
            x = torch.cat([x[:, :1], tokens, x[:, 5:]], dim=1)
        x = block(x, causal=True)
    eot = x[torch.arange(len(NAMES)), learner.eot]
    expected = clip.ln_final(eot) @ clip.text_projection
    torch.testing.assert_close(learner.text_features(), expected, rtol=1e-5, atol=1e-5)


def test_injection_at_block_zero_leaves_the_context_unused(clip: CLIP) -> None:
    learner = perturbed(create_learner("tcp", clip, NAMES, {"injection_layer": 0}, dataset=EUROSAT))
    learner.text_features().sum().backward()
    assert learner.trainable.ctx.grad is None or not learner.trainable.ctx.grad.any()
    assert learner.trainable.meta_net.linear2.weight.grad.abs().sum() > 0


def test_objective_is_ce_plus_weighted_kg(clip: CLIP) -> None:
    learner = perturbed(create_learner("tcp", clip, NAMES, {**TINY, "weight": 3.0}, dataset=EUROSAT)).train()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 4])
    objective = learner(images, labels)
    assert set(objective.terms) == {"ce", "kg"}
    with torch.no_grad():
        logits = learner.eval()(images)
        cos = F.cosine_similarity(learner.text_features(), learner.teacher_features(), dim=1, eps=1e-7)
    torch.testing.assert_close(objective.terms["ce"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(objective.terms["kg"], 1 - cos.mean())
    torch.testing.assert_close(objective.total, objective.terms["ce"] + 3.0 * objective.terms["kg"])
    assert set(objective.tensors) >= {"teacher/text_features", "student/text_features"}
    with torch.no_grad():
        torch.testing.assert_close(learner.eval_tensors(images)["debug/class_prompts"], learner.class_prompts())


# ----- text fast paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", [
    EncoderOptions(text_chunk_size=2),  # per-class tokens must follow their classes into the chunks
    EncoderOptions(share_text_prefix=False),
    EncoderOptions(truncate_text=False, share_text_prefix=False),
])
def test_fast_paths_are_exact(clip: CLIP, encoder: EncoderOptions) -> None:
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    results = []
    state = perturbed(create_learner("tcp", clip, NAMES, TINY, dataset=EUROSAT)).prompt_state_dict()
    for options in (EncoderOptions(), encoder):
        learner = create_learner("tcp", clip, NAMES, TINY, dataset=EUROSAT, encoder=options).train()
        learner.load_prompt_state_dict(state)
        objective = learner(images, labels)
        objective.total.backward()
        results.append((objective.total.detach(), [p.grad.clone() for p in learner.trainable_parameters()]))
        if options == EncoderOptions():
            assert learner.last_text_shared_prefix == 1  # only SOT: the context positions differ per class later
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ----- new class names, checkpoints, import-official ------------------------------------------------------------
def test_prompts_work_for_new_class_names_and_datasets(clip: CLIP, tmp_path: Path) -> None:
    learner = perturbed(create_learner("tcp", clip, NAMES[:3], TINY, dataset=EUROSAT))
    out = save_prompts(learner, tmp_path / "ckpt", clip_info={"name": "tiny", "sha256": "0" * 64})
    images = torch.randn(2, 3, 32, 32)
    novel = ["tabby cat", "pine_forest"]
    pets = DatasetContext("oxford_pets", "a photo of a {}, a type of pet.")
    with torch.no_grad():
        for dataset in (None, pets):
            loaded = load_prompts(out, clip, classnames=novel, dataset=dataset).eval()
            direct = create_learner("tcp", clip, novel, TINY, dataset=dataset or EUROSAT).eval()
            direct.load_prompt_state_dict(learner.prompt_state_dict())
            torch.testing.assert_close(loaded(images), direct(images), rtol=0, atol=0)
            # the novel classes' tokens come from their own zero-shot features
            template = TEACHER_TEMPLATES[(dataset or EUROSAT).name]
            expected = loaded.trainable.meta_net(zero_shot(clip, loaded, template, novel)).reshape(2, 4, -1)
            torch.testing.assert_close(loaded.class_prompts(), expected)
        assert loaded.learnable_template() == "X X X X {}, a type of pet."


def test_official_config_and_hard_coded_values() -> None:
    case = {"hard_coded": {"injection_layer": 6, "kg_weight": 2.0, "n_class_prompts": 4, "injection_mix_weight": 1.0}}
    official = {"TRAINER.COOP.N_CTX": 4, "TRAINER.COOP.CTX_INIT": True, "TRAINER.COOP.W": 1.0,
                "TRAINER.COOP.PREC": "fp32", "DATASET.NAME": "EuroSAT"}
    cfg = config_from_official("tcp", official, case)
    # W is dead code officially: the kg weight is the hard-coded one
    assert (cfg.n_ctx, cfg.ctx_init, cfg.injection_layer, cfg.weight) == (4, "a photo of a", 6, 2.0)
    assert config_from_official("tcp", {"N_CTX": 4, "CTX_INIT": False, "W": 1.0}, {}).weight == 8.0
    with pytest.raises(ValueError, match="injection_mix_weight 0.5"):
        config_from_official("tcp", official, {"hard_coded": {"injection_mix_weight": 0.5}})
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("tcp", {"TRAINER.COOP.N_CTXX": 4}, {})
    with pytest.raises(ValueError, match="n_ctx must be 4"):
        config_from_official("tcp", {"N_CTX": 16}, {})
    with pytest.raises(ValueError, match="class_specific"):
        config_from_official("tcp", {"CSC": True}, {})


def test_injection_layer_must_fit_the_model(clip: CLIP) -> None:
    with pytest.raises(ValueError, match="injection_layer = 4 must be below the model's 4 text layers"):
        create_learner("tcp", clip, NAMES, {"injection_layer": 4})
    with pytest.raises(ValueError, match="injection_layer must be an integer"):
        create_learner("tcp", clip, NAMES, {"injection_layer": -1})


def test_import_official_gives_reference_logits(tmp_path: Path) -> None:
    ref = load_reference(REFERENCE)
    # Dassl saves the prompt learner's own state dict (names without "prompt_learner.", its class buffers too)
    state = {k.split("/", 2)[2].removeprefix("prompt_learner."): torch.from_numpy(v)
             for k, v in ref.arrays.items() if k.startswith("tcp/param/")}
    state["token_prefix"] = torch.zeros(5, 1, 64)
    state["token_suffix"] = torch.zeros(5, 72, 64)
    folder = tmp_path / "official" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 50, "optimizer": {}, "scheduler": {}}, folder / "model.pth.tar-50")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "official"), "--method", "tcp", "-o", str(out),
                 "--arch", "tiny-parity"]) == 0
    meta = read_prompt_meta(out)
    assert meta["method"] == "tcp" and meta["config"]["injection_layer"] == 8
    learner = load_prompts(out, reference_clip(ref), classnames=ref.meta["classnames"], dataset=EUROSAT).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays["tcp/logits"]), rtol=1e-4, atol=1e-4)


# ----- the recipe, the demo world and the speed command ---------------------------------------------------------
def test_preset_is_the_official_recipe() -> None:
    cfg = load_config("tcp_b2n")
    assert cfg.method.options == {"n_ctx": 4, "ctx_init": "", "weight": 8.0, "injection_layer": 8}
    o = cfg.optim
    assert (o.optimizer, o.adam_eps, o.adam_betas, o.lr, o.weight_decay) == ("adam", 1e-3, (0.9, 0.999), 2e-3, 5e-4)
    assert (o.epochs, o.warmup_epochs, o.warmup_lr, o.batch_size) == (50, 1, 1e-5, 32)
    assert load_config("tcp_b2n", ["data.dataset=sun397"]).optim.epochs == 25
    assert load_config("tcp_b2n", ["data.dataset=imagenet"]).optim.epochs == 25


def test_adam_option() -> None:
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = build_optimizer(params, 0.002, weight_decay=5e-4, optimizer="adam", adam_eps=1e-3)
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert (group["eps"], group["betas"], group["weight_decay"], group["amsgrad"]) == (1e-3, (0.9, 0.999), 5e-4, False)
    assert isinstance(build_optimizer(params, 0.002), torch.optim.SGD)
    with pytest.raises(ConfigError, match="optim.optimizer must be one of"):
        OptimSection(optimizer="lamb")
    with pytest.raises(ConfigError, match="adam_eps"):
        OptimSection(adam_eps=0)


def test_trains_on_the_demo_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmprompt.demo import generate_demo_dataset
    from mmprompt.methods import get_method

    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    generate_demo_dataset(tmp_path / "data", per_class_train=2, per_class_val=1, per_class_test=1)
    sets = [*get_method("tcp").demo_overrides, "optim.epochs=1"]
    run = tmp_path / "run"
    assert main(["train", "--method", "tcp", "--dataset", "mmprompt_demo", "--data-root", str(tmp_path / "data"),
                 "--clip", "demo", "--output", str(run), "--shots", "2", "--num-workers", "0", "--device", "cpu",
                 "--no-progress", "--set", *sets]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and set(metrics["eval"]) == {"base", "novel"}
    assert "optimizer: adam" in (run / "config.yaml").read_text()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("kg" in json.dumps(entry) for entry in log)


def test_speed_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--method", "tcp", "--random-weights", "--arch", "tiny", "--classes", "10", "--steps", "1",
                 "--warmup", "0", "--eval-images", "4", "--option", "injection_layer=2", "--no-isolate",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [entry] = doc["results"]
    assert doc["settings"]["method"] == "tcp" and not entry["default"]["error"] and not entry["reference"]["error"]
    assert entry["default"]["prompt_tokens"]["shared"] == 1


def test_resume_with_adam_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The official recipe (Adam eps 1e-3) stopped after an epoch and resumed ends with the same prompts."""
    from safetensors.torch import load_file

    from mmprompt.engine.checkpoint import load_state, state_path
    from mmprompt.engine.clip_source import resolve_clip
    from mmprompt.engine.run import load_splits, run_experiment
    from test_engine_support import assert_same_prompts, fast_config, make_data_root, save_tiny_clip

    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    cfg = fast_config(make_data_root(tmp_path / "data"), weights, preset="tcp_b2n",
                      extra=["optim.epochs=3", "method.injection_layer=2"])
    assert cfg.optim.optimizer == "adam" and cfg.optim.adam_eps == 1e-3
    model, info = resolve_clip(weights, "quick_gelu", "cpu")
    splits = load_splits(cfg)

    def run(out: Path, **kw):  # noqa: ANN003, ANN202
        return run_experiment(cfg, model, info, out, train_splits=splits, progress=False, **kw)

    run(tmp_path / "full")
    assert run(tmp_path / "cut", stop_after_epochs=1) is None
    assert "exp_avg" in str(load_state(state_path(tmp_path / "cut"))["optimizer"]["state"])  # Adam's moments saved
    assert run(tmp_path / "cut")["train"]["resumed_from"] == 1
    assert_same_prompts(load_file(str(tmp_path / "full" / "prompts.safetensors")),
                        load_file(str(tmp_path / "cut" / "prompts.safetensors")))
