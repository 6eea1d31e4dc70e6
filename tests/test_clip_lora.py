"""CLIP-LoRA and the weight-space adapters beyond the reference file (its parity with the official code, both
cases and the step after one AdamW step, is in test_parity.py): the official dropout-0 gradient is needed
to match, the low-rank updates equal the official layer written out, merging gives the same logits at no
adapter cost and is refused twice, checkpoints hold only the low-rank matrices, every official option,
official checkpoints import, and a run trains, resumes, evaluates and predicts on the demo world."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmprompt.checkpoint import load_prompts, read_prompt_meta, save_prompts
from mmprompt.cli import main
from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.methods import EncoderOptions, config_from_official, create_learner, make_config
from mmprompt.methods.clip_lora import TEXT_TABLE, VISION_TABLES
from mmprompt.parity import load_reference, reference_clip, run_parity
from test_engine_support import tiny_batch_f64, tiny_clip_f64

REFERENCE = Path(__file__).parent / "data" / "clip_lora_reference.npz"
NAMES = ["sea_or_lake", "Forest", "great white shark", "Chesapeake Bay retriever with a spotted collar", "x"]


clip = pytest.fixture(scope="module", name="clip")(tiny_clip_f64)  # float64: the algorithm, not rounding
batch = pytest.fixture(scope="module", name="batch")(tiny_batch_f64)


def make(clip: CLIP, text_paths: EncoderOptions | None = None, **options: object):  # noqa: ANN201
    torch.manual_seed(2)
    learner = create_learner("clip_lora", clip, NAMES, {"dropout_masks": False, **options},
                             encoder=text_paths).double()
    with torch.no_grad():  # B starts at 0: give every matrix a value of its own
        for p in learner.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return learner


# ----- parity details -------------------------------------------------------------------------------
def test_the_dropout0_case_needs_the_official_gradient() -> None:
    """Without the quirk the dropout-0 case keeps its logits and loss but its gradients (and so the step) differ."""
    (plain,) = run_parity(REFERENCE, ["clip_lora_dropout0"], official_dropout0_gradient=False)
    bad = {c.name for c in plain.checks if not c.ok}
    assert bad and all(n.startswith("grad/") or n == "step1/logits" for n in bad)
    assert any(n.startswith("grad/visual.") for n in bad) and any(n.startswith("grad/transformer.") for n in bad)
    (official,) = run_parity(REFERENCE, ["clip_lora_dropout0"])
    assert official.ok
    assert {c.name for c in official.checks} >= {"step1/logits", "train_logits", "zs_logits", "debug/text_features"}


def test_reference_configuration_and_layers() -> None:
    ref = load_reference(REFERENCE)
    spec = ref.meta["cases"]["clip_lora"]
    cfg = config_from_official("clip_lora", spec["official_config"], spec)
    assert cfg.scaling == pytest.approx(spec["lora_scaling"]) and not cfg.dropout_masks
    learner = create_learner("clip_lora", reference_clip(ref), ref.meta["classnames"], cfg)
    assert learner.lora_blocks == {"text": spec["lora_layers"]["text"], "visual": spec["lora_layers"]["vision"]}
    assert sum(p.numel() for p in learner.trainable_parameters()) == 23040


# ----- the insertion point equals the official layer ---------------------------------------------------
def official_attention(block, x, learner, tower: str, i: int, causal: bool) -> torch.Tensor:  # noqa: ANN001
    """PlainMultiheadAttentionLoRA written from the spec: four separate maps, each W0 x + b + s x A^T B^T."""
    attn, cfg = block.attn, learner.config
    d = x.shape[-1]
    mods = getattr(learner.prompt, tower)[str(i)] if str(i) in getattr(learner.prompt, tower, {}) else {}

    def proj(name: str, w: torch.Tensor, b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = z @ w.T + b
        if name in mods:
            y = y + cfg.scaling * (z @ mods[name].w_lora_A.T @ mods[name].w_lora_B.T)
        return y

    q, k, v = (proj(n, attn.in_proj_weight[j * d:(j + 1) * d], attn.in_proj_bias[j * d:(j + 1) * d], x)
               for j, n in enumerate(("q_proj", "k_proj", "v_proj")))
    heads = attn.heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(d // heads)
    if causal:
        n = x.shape[1]
        scores = scores + torch.full((n, n), float("-inf"), dtype=x.dtype).triu(1)
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
    return proj("proj", attn.out_proj.weight, attn.out_proj.bias, out)


def official_tower(blocks, x, learner, tower: str, causal: bool) -> torch.Tensor:  # noqa: ANN001
    for i, block in enumerate(blocks):
        x = x + official_attention(block, block.ln_1(x), learner, tower, i, causal)
        x = x + block.mlp(block.ln_2(x))
    return x


TEXT_PATHS = {"packed": EncoderOptions(), "full": EncoderOptions(truncate_text=False, share_text_prefix=False),
              "chunks": EncoderOptions(text_chunk_size=2)}


@pytest.mark.parametrize("path", list(TEXT_PATHS))
@pytest.mark.parametrize("options", [{}, {"params": ["q", "v", "o"], "position": "top3", "r": 3, "alpha": 2}])
def test_low_rank_updates_equal_the_official_layers(clip: CLIP, batch, path: str, options: dict) -> None:  # noqa: ANN001
    images, _ = batch
    learner = make(clip, TEXT_PATHS[path], **options)
    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    x = official_tower(v.transformer.resblocks, v.ln_pre(x), learner, "visual", causal=False)
    image = v.ln_post(x[:, 0]) @ v.proj
    tokens = learner.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    t = clip.token_embedding(tokens) + clip.positional_embedding
    t = official_tower(clip.transformer.resblocks, t, learner, "text", causal=True)
    text = clip.ln_final(t[torch.arange(len(NAMES)), tokens.argmax(-1)]) @ clip.text_projection
    learner.eval()
    torch.testing.assert_close(learner.image_features(images), image, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(learner.text_features(), text, rtol=1e-10, atol=1e-12)
    expected = 100 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(learner(images), expected.float(), rtol=1e-6, atol=1e-5)  # logits are fp32


def test_dropout_acts_on_the_branch_input_in_training_only(clip: CLIP, batch) -> None:  # noqa: ANN001
    images, labels = batch
    learner = make(clip, dropout_masks=True, dropout_rate=0.5)
    with torch.no_grad():
        learner.eval()
        a, b = learner(images), learner(images)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        learner.train()
        torch.manual_seed(0)
        t1 = learner.objective(images, labels).logits
        torch.manual_seed(1)
        t2 = learner.objective(images, labels).logits
    assert (t1 - t2).abs().max() > 1e-6  # masks are drawn in training
    off = make(clip, dropout_rate=0.5)  # masks off: training = evaluation
    with torch.no_grad():
        torch.testing.assert_close(off.train().objective(images, labels).logits, off.eval()(images))


# ----- merge -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"params": ["q", "k", "v", "o"]}, {"encoder": "vision"}])
def test_merge_gives_the_same_logits_without_adapters(batch, options: dict) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = CLIP(get_config("tiny")).double().eval().requires_grad_(False)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = batch
    learner = make(model, **options).eval()
    with torch.no_grad():
        before = learner(images)
        learner.merge_weight_adapters()
        assert learner.weights_merged and learner.active_weight_adapters() == (None, None)
        calls = []
        for m in learner.prompt.modules():
            if hasattr(m, "w_lora_A"):
                m.register_forward_hook(lambda *a: calls.append(1))
        merged = learner(images)
        assert not calls  # no adapter runs after the merge
        # the plain CLIP with the merged weights gives the learner's logits: nothing else is needed
        tokens = learner.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
        plain = 100 * F.normalize(model.encode_image(images), dim=-1) @ F.normalize(model.encode_text(tokens), dim=-1).T
    torch.testing.assert_close(merged, before, rtol=1e-6, atol=1e-5)  # fp32 logits of fp64 features
    torch.testing.assert_close(plain.float(), before, rtol=1e-6, atol=1e-5)
    assert any(not torch.equal(v, original[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="already merged"):
        learner.merge_weight_adapters()
    with pytest.raises(RuntimeError, match="unmerge_weight_adapters"):
        learner.train()
    learner.unmerge_weight_adapters()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, original[k], rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="not merged"):
        learner.unmerge_weight_adapters()
    with torch.no_grad():
        torch.testing.assert_close(learner.train().eval()(images), before, rtol=1e-6, atol=1e-5)


def test_a_method_without_weight_adapters_cannot_merge(clip: CLIP) -> None:
    learner = create_learner("coop", clip, ["a", "b"], {"n_ctx": 2})
    with pytest.raises(RuntimeError, match="no weight adapters"):
        learner.merge_weight_adapters()


# ----- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_holds_only_the_low_rank_matrices(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    tiny = CLIP(get_config("tiny")).eval()
    learner = create_learner("clip_lora", tiny, ["cat", "dog", "tiny_bird"], {"r": 3, "params": ["q", "o"]})
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = save_prompts(learner, tmp_path / "ckpt", clip_info={"name": "tiny", "sha256": "0" * 64})
    saved = load_file(str(out / "prompts.safetensors"))
    layers = tiny.config.text.layers + tiny.config.vision.layers
    assert len(saved) == layers * 2 * 2 and all(k.rsplit(".", 1)[1] in ("w_lora_A", "w_lora_B") for k in saved)
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in learner.trainable_parameters())
    assert {v.shape[0] for k, v in saved.items() if k.endswith("w_lora_A")} == {3}
    assert read_prompt_meta(out)["config"]["params"] == ["q", "o"]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        restored = load_prompts(out, tiny).eval()
        torch.testing.assert_close(restored(images), learner.eval()(images), rtol=0, atol=0)
        novel = load_prompts(out, tiny, classnames=["horse", "frog"]).eval()
        assert novel(images).shape == (2, 2)


# ----- options ---------------------------------------------------------------------------------------
def test_official_tables_and_parameter_count() -> None:
    with torch.device("meta"):
        b16 = CLIP(get_config("ViT-B/16"))
        l14 = CLIP(get_config("ViT-L/14"))
        b32 = CLIP(get_config("ViT-B/32"))
    cfg = make_config("clip_lora", {})
    assert cfg.scaling == pytest.approx(1 / math.sqrt(2))
    assert make_config("clip_lora", {"r": 4, "alpha": 2}).scaling == pytest.approx(1.0)
    assert cfg.blocks(b16) == {"text": list(range(12)), "visual": list(range(12))}
    assert cfg.blocks(l14) == {"text": list(range(12)), "visual": list(range(24))}
    half_up = make_config("clip_lora", {"position": "half-up"})
    assert half_up.blocks(l14) == {"text": list(range(6, 12)), "visual": list(range(12, 24))}
    for position in ("bottom", "mid", "up", "half-bottom", "top3"):
        c = make_config("clip_lora", {"position": position, "encoder": "text"})
        assert c.blocks(b16) == {"text": TEXT_TABLE[position]}
    assert make_config("clip_lora", {"position": "top3", "encoder": "vision"}).blocks(b16) == {"visual": [9, 10, 11]}
    with pytest.raises(ValueError, match="ViT-B/32"):
        make_config("clip_lora", {"position": "top3"}).check_model(b32)
    with pytest.raises(ValueError, match="ViT-L/14"):
        make_config("clip_lora", {"position": "mid", "encoder": "vision"}).check_model(l14)
    assert set(VISION_TABLES["ViT-L/14"]) == {"half-up", "half-bottom", "all"}
    d_v, d_t = 768, 512
    assert 12 * 3 * 2 * 2 * (d_v + d_t) == 184320  # the spec's count for the defaults on ViT-B/16


def test_encoders(clip: CLIP, batch) -> None:  # noqa: ANN001
    images, labels = batch
    text_only = make(clip, encoder="text")
    assert {n.split(".")[1] for n, _ in text_only.named_parameters() if n.startswith("trainable.")} == {"text"}
    objective = text_only.train()(images, labels)
    assert not objective.tensors["debug/image_features"].requires_grad  # no gradient through the images
    vision = make(clip, encoder="vision")
    objective = vision.train()(images, labels)
    assert "debug/text_features" not in objective.tensors
    z = vision.zero_shot_classifier()
    torch.testing.assert_close(z, F.normalize(clip.encode_text(vision.tokenize(
        [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])), dim=-1).float())
    expected = 100 * F.normalize(objective.tensors["debug/image_features"].float(), dim=-1) @ z.T
    torch.testing.assert_close(objective.logits, expected)
    objective.total.backward()
    assert all(p.grad is not None for p in vision.trainable_parameters())


def test_config_errors_are_clear() -> None:
    for values, match in [({"encoder": "image"}, "encoder"), ({"position": "top1"}, "position"),
                          ({"params": ["q", "x"]}, "params"), ({"params": []}, "params"), ({"r": 0}, "r"),
                          ({"dropout_rate": 1.0}, "dropout_rate"), ({"vision_table": "RN50"}, "vision_table"),
                          ({"template": "a photo"}, "template")]:
        with pytest.raises(ValueError, match=match):
            make_config("clip_lora", values)
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("clip_lora", {"rank": 2})


# ----- import of official save_lora files --------------------------------------------------------------
def test_import_official_gives_reference_logits(tmp_path: Path) -> None:
    """A ``save_lora`` file (layers counted text then vision, metadata) converts and gives the official logits."""
    ref = load_reference(REFERENCE)
    prefix = "clip_lora/param/"
    params = {k[len(prefix):]: torch.from_numpy(v) for k, v in ref.arrays.items() if k.startswith(prefix)}
    weights: dict[str, dict] = {}
    layers = [f"transformer.resblocks.{i}" for i in range(10)] + [f"visual.transformer.resblocks.{i}" for i in range(10)]
    for n, layer in enumerate(layers):
        weights[f"layer_{n}"] = {proj: {m: params[f"{layer}.attn.{proj}.{m}"] for m in ("w_lora_A", "w_lora_B")}
                                 for proj in ("q_proj", "k_proj", "v_proj")}
    folder = tmp_path / "official" / "vitb16" / "dtd" / "16shots" / "seed1"
    folder.mkdir(parents=True)
    meta = {"r": 2, "alpha": 1, "encoder": "both", "params": ["q", "k", "v"], "position": "all"}
    torch.save({"weights": weights, "metadata": meta}, folder / "lora_weights.pt")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "official"), "--method", "clip_lora", "-o", str(out),
                 "--arch", "tiny-parity"]) == 0
    saved = json.loads((out / "prompts.json").read_text())
    assert saved["method"] == "clip_lora" and saved["config"]["r"] == 2 and saved["config"]["position"] == "all"
    learner = load_prompts(out, reference_clip(ref), classnames=ref.meta["classnames"]).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays["clip_lora/logits"]), rtol=1e-4, atol=1e-4)
    assert np.abs(ref.arrays["clip_lora/logits"]).max() > 0
    (folder / "lora_weights.pt").write_bytes(b"not a torch file")
    assert main(["import-official", str(tmp_path / "official"), "--method", "clip_lora", "-o",
                 str(tmp_path / "bad"), "--arch", "tiny-parity"]) != 0


# ----- runs --------------------------------------------------------------------------------------------
def test_preset_is_the_official_recipe() -> None:
    from mmprompt.config import load_config

    cfg = load_config("clip_lora_fs")
    assert cfg.method.options == {"encoder": "both", "position": "all", "params": ["q", "k", "v"], "r": 2,
                                  "alpha": 1, "dropout_rate": 0.25}
    o = cfg.optim
    assert (o.optimizer, o.lr, o.weight_decay, o.batch_size, o.warmup_epochs) == ("adamw", 2e-4, 1e-2, 32, 0)
    # quirk 9: 500 x shots iterations (no epoch count), cosine per iteration down to 1e-6, no warm-up
    assert (o.epochs, o.iterations_per_shot, o.schedule, o.min_lr) == (None, 500, "iter_cosine", 1e-6)
    assert load_config("clip_lora_fs", dataset="imagenet").optim.epochs is None


def test_resume_with_adamw_and_dropout_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The official recipe (AdamW, LoRA dropout 0.25) stopped after an epoch and resumed ends with the same
    matrices as the run that was not stopped."""
    from safetensors.torch import load_file

    from mmprompt.engine.checkpoint import load_state, state_path
    from mmprompt.engine.clip_source import resolve_clip
    from mmprompt.engine.run import load_splits, run_experiment
    from test_engine_support import assert_same_prompts, fast_config, make_data_root, save_tiny_clip

    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    cfg = fast_config(make_data_root(tmp_path / "data"), weights, preset="clip_lora_fs",
                      extra=["optim.epochs=3", "optim.batch_size=4"])
    assert cfg.optim.optimizer == "adamw" and cfg.method.options["dropout_rate"] == 0.25
    model, info = resolve_clip(weights, "quick_gelu", "cpu")
    splits = load_splits(cfg)

    def run(out: Path, **kw):  # noqa: ANN003, ANN202
        return run_experiment(cfg, model, info, out, train_splits=splits, progress=False, **kw)

    run(tmp_path / "full")
    assert run(tmp_path / "cut", stop_after_epochs=1) is None
    assert "exp_avg" in str(load_state(state_path(tmp_path / "cut"))["optimizer"]["state"])
    assert run(tmp_path / "cut")["train"]["resumed_from"] == 1
    assert_same_prompts(load_file(str(tmp_path / "full" / "prompts.safetensors")),
                        load_file(str(tmp_path / "cut" / "prompts.safetensors")))


def test_train_eval_predict_on_the_demo_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from mmprompt.demo import generate_demo_dataset

    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    generate_demo_dataset(data, per_class_train=2, per_class_val=1, per_class_test=1)
    common = ["--method", "clip_lora", "--dataset", "mmprompt_demo", "--data-root", str(data), "--clip", "demo",
              "--shots", "2", "--num-workers", "0", "--device", "cpu", "--no-progress", "--set", "optim.epochs=2",
              "optim.batch_size=4"]
    full = tmp_path / "full"
    assert main(["train", *common[:-3], "--config", "clip_lora_fs", "--output", str(full), *common[-3:]]) == 0
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["status"] == "done" and set(metrics["eval"]) == {"test"}  # few-shot: every class
    assert "optimizer: adamw" in (full / "config.yaml").read_text()
    saved = load_file(str(full / "prompts.safetensors"))
    assert saved and all("w_lora_" in k for k in saved)
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if k.endswith("w_lora_B"))  # it trained
    assert main(["eval", "--checkpoint", str(full), "--dataset", "mmprompt_demo", "--data-root", str(data),
                 "--subsample", "new", "--device", "cpu"]) == 0
    image = next((data / "mmprompt_demo").rglob("*.png"))
    assert main(["predict", "--checkpoint", str(full), "--classes", "red circle,blue square", str(image),
                 "--json"]) == 0


def test_the_insertion_point_checks_its_input(clip: CLIP) -> None:
    """A bad set of deltas is refused with its reason, and a refused merge changes no weight."""
    from mmprompt.clip.model import merge_weight_deltas

    learner = make(clip)
    vision, _ = learner.weight_adapters()
    before = clip.visual.transformer.resblocks[0].attn.in_proj_weight.clone()
    bad = [dict(vision[0]), {"x": vision[0]["q"]}]
    with pytest.raises(ValueError, match="unknown projection 'x'"):
        merge_weight_deltas(clip.visual.transformer, bad)
    assert torch.equal(clip.visual.transformer.resblocks[0].attn.in_proj_weight, before)
    too_many = [None] * (clip.config.vision.layers + 1)
    with pytest.raises(ValueError, match="sets of weight deltas"):
        merge_weight_deltas(clip.visual.transformer, too_many)
    with pytest.raises(ValueError, match="sets of weight deltas"):
        clip.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.float64), weight_deltas=too_many)


def test_adamw_decays_every_matrix_decoupled() -> None:
    """optim.optimizer adamw: torch AdamW, weight decay applied to the parameter (not added to the gradient)."""
    from mmprompt.engine.optim import build_optimizer

    p = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([p], 2e-4, weight_decay=1e-2, optimizer="adamw")
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 1e-2
    p.grad = torch.zeros(3)
    optimizer.step()  # zero gradient: only the decoupled decay moves the parameter, by lr * wd * p
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 2e-4 * 1e-2))


def test_bf16_autocast_training_runs_and_stays_close(batch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = CLIP(get_config("tiny")).eval().requires_grad_(False)
    images, labels = batch[0].float(), batch[1]
    learner = make(model).float().train()
    reference = learner(images, labels)
    reference.total.backward()
    grads = [p.grad.clone() for p in learner.trainable_parameters()]
    learner.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = learner(images, labels)
    low.total.backward()
    lo, ref = float(low.total.detach()), float(reference.total.detach())
    assert abs(lo - ref) < 0.05 * abs(ref) + 0.05
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in learner.trainable_parameters())
    cos = F.cosine_similarity(torch.cat([g.flatten() for g in grads]),
                              torch.cat([p.grad.flatten() for p in learner.trainable_parameters()]), dim=0)
    assert cos > 0.95
