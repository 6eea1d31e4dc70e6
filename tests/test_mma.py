"""MMA beyond its reference file (its parity with the official code is in test_parity.py): the adapters sit
exactly where the official forward puts them, the gradients are the official scaled ones, the fast text
paths stay exact, evaluation caches text features only while the adapters are unchanged, checkpoints hold
the adapters only and work with any class names, and official checkpoints import."""

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
from mmprompt.engine.optim import build_optimizer
from mmprompt.methods import EncoderOptions, config_from_official, create_learner, make_config, mma
from mmprompt.parity import load_reference, reference_clip
from test_engine_support import tiny_batch_f64, tiny_clip_f64

REFERENCE = Path(__file__).parent / "data" / "mma_reference.npz"
NAMES = ["sea_or_lake", "Forest", "great white shark", "Chesapeake Bay retriever with a spotted collar", "x"]
SMALL = {"adapter_start": 2, "adapter_end": 4, "adapter_dim": 8}
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


clip = pytest.fixture(scope="module", name="clip")(tiny_clip_f64)  # float64: the algorithm, not rounding
batch = pytest.fixture(scope="module", name="batch")(tiny_batch_f64)


def make(clip: CLIP, names: list[str] = NAMES, encoder: EncoderOptions | None = None, **options: object):  # noqa: ANN201
    torch.manual_seed(2)
    learner = create_learner("mma", clip, names, {**SMALL, **options}, encoder=encoder).double()
    with torch.no_grad():  # biases start at 0: give every parameter a value of its own
        for p in learner.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return learner


# ----- the forward is the official one -------------------------------------------------------------
def official_adapter(learner, tower: str, i: int, z: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """s * up(ReLU(W_sh ReLU(down(z)) + b_sh)), written from the spec."""
    own = getattr(learner.trainable, f"{tower}_adapter")[str(i)]
    shared = learner.trainable.shared_adapter[str(i)][0]
    h = torch.relu(z @ own.down[0].weight.T + own.down[0].bias)
    h = torch.relu(h @ shared.weight.T + shared.bias)
    return learner.config.adapter_scale * (h @ own.up.weight.T + own.up.bias)


def official_blocks(learner, tower: str, blocks, x: torch.Tensor, causal: bool) -> torch.Tensor:  # noqa: ANN001
    """out = h + mlp(ln_2(h)) + s * A(ln_1(x)), h = x + attn(ln_1(x)), in blocks start..end (1-based)."""
    cfg = learner.config
    for i, block in enumerate(blocks, start=1):
        normed = block.ln_1(x)
        h = x + block.attn(normed, causal=causal)
        out = h + block.mlp(block.ln_2(h))
        if cfg.adapter_start <= i <= cfg.adapter_end:
            out = out + official_adapter(learner, tower, i, normed)
        x = out
    return x


@pytest.mark.parametrize("truncate", [True, False])
def test_adapters_sit_where_the_official_forward_puts_them(clip: CLIP, batch, truncate: bool) -> None:  # noqa: ANN001
    images, _ = batch
    learner = make(clip, encoder=EncoderOptions(truncate_text=truncate), adapter_scale=0.5)
    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = official_blocks(learner, "visual", v.transformer.resblocks, v.ln_pre(x), causal=False)
    image = v.ln_post(x[:, 0]) @ v.proj
    tokens = learner.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    eot = tokens.argmax(-1)
    t = clip.token_embedding(tokens) + clip.positional_embedding
    t = official_blocks(learner, "text", clip.transformer.resblocks, t, causal=True)
    text = clip.ln_final(t[torch.arange(len(NAMES)), eot]) @ clip.text_projection
    with torch.no_grad():
        torch.testing.assert_close(learner.image_features(images), image, **TIGHT)
        torch.testing.assert_close(learner.text_features(), text, **TIGHT)
        zero_shot = clip.encode_text(tokens)
    assert (text - zero_shot).abs().max() > 1e-3  # the adapters do change the features


# ----- gradients as the official backward gives them -----------------------------------------------
def gradients(learner, images: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:  # noqa: ANN001, E501
    """Adapter gradients, and the gradients reaching the residual streams' inputs (images, token embeddings)."""
    images = images.clone().requires_grad_(True)
    learner.token_embeddings = learner.token_embeddings.detach().clone().requires_grad_(True)
    learner.train()
    loss = F.cross_entropy(learner(images), labels)
    *params, g_img, g_txt = torch.autograd.grad(loss, [*learner.trainable_parameters(), images,
                                                       learner.token_embeddings])
    return params, g_img, g_txt


def test_adapter_gradients_are_plain_over_s_and_the_residual_stream_is_untouched(
    clip: CLIP, batch, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    images, labels = batch
    learner = make(clip, adapter_scale=0.01)
    scaled, img_scaled, txt_scaled = gradients(learner, images, labels)
    monkeypatch.setattr(mma, "grad_scale", lambda x, factor: x)  # no gradient-scale layer: plain autograd
    plain, img_plain, txt_plain = gradients(learner, images, labels)
    assert len(scaled) == len(learner.trainable_parameters()) == 3 * 10  # blocks 2..4: text, visual (4 each) and shared (2)
    for got, want in zip(scaled, plain, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want / 0.01, **TIGHT)
    assert torch.equal(img_scaled, img_plain) and torch.equal(txt_scaled, txt_plain)


def test_weight_decay_applies_to_the_raw_parameters(clip: CLIP, batch) -> None:  # noqa: ANN001
    images, labels = batch
    learner = make(clip, adapter_scale=0.01)
    before = [p.detach().clone() for p in learner.trainable_parameters()]
    grads, _, _ = gradients(learner, images, labels)
    learner.zero_grad(set_to_none=True)
    optimizer = build_optimizer(learner.parameter_groups(), 0.1, momentum=0.0, weight_decay=0.5)
    F.cross_entropy(learner.train()(images), labels).backward()
    optimizer.step()
    for p, old, g in zip(learner.trainable_parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), old - 0.1 * (g + 0.5 * old), **TIGHT)


# ----- fast text paths --------------------------------------------------------------------------
def train_step(learner, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
    learner.train()
    learner.zero_grad(set_to_none=True)
    loss = F.cross_entropy(learner(images), labels)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in learner.trainable_parameters()]


@pytest.mark.parametrize(
    "options",
    [{"truncate_text": True, "share_text_prefix": True}, {"truncate_text": True, "share_text_prefix": False},
     {"truncate_text": True, "text_chunk_size": 2}, {"truncate_text": False, "text_chunk_size": 2}],
)
def test_fast_text_paths_equal_the_full_context(clip: CLIP, batch, options: dict) -> None:  # noqa: ANN001
    images, labels = batch
    full = make(clip, encoder=EncoderOptions(truncate_text=False, share_text_prefix=False, text_chunk_tokens=0),
                adapter_scale=0.5)
    fast = make(clip, encoder=EncoderOptions(text_chunk_tokens=0, **options), adapter_scale=0.5)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(images), full.eval()(images), **TIGHT)
    loss_fast, grads_fast = train_step(fast, images, labels)
    loss_full, grads_full = train_step(full, images, labels)
    torch.testing.assert_close(loss_fast, loss_full, **TIGHT)
    for a, b in zip(grads_fast, grads_full, strict=True):
        # LayerNorm computes in float32 even in a float64 model: the shared prefix sums its gradients in
        # another order (CoOp shows the same ~1e-7), so gradients are compared at 1e-6 of their largest entry
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    if options.get("share_text_prefix", True) and options["truncate_text"] and "text_chunk_size" not in options:
        assert fast.last_text_shared_prefix == 5  # SOT "a photo of a": computed once, adapters included


# ----- evaluation cache -------------------------------------------------------------------------
def test_eval_text_features_are_cached_until_the_adapters_or_classes_change(
    clip: CLIP, batch, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    images, labels = batch
    learner = make(clip)
    calls: list[int] = []
    original = learner.encode_text
    monkeypatch.setattr(learner, "encode_text", lambda x, e, **kw: calls.append(len(x)) or original(x, e, **kw))
    learner.eval()
    with torch.no_grad():
        first = learner(images)
        torch.testing.assert_close(learner(images), first, rtol=0, atol=0)
        learner.class_text_features()
    assert calls == [5]
    optimizer = torch.optim.SGD(learner.trainable_parameters(), lr=1.0)
    F.cross_entropy(learner.train()(images), labels).backward()  # training always encodes afresh
    optimizer.step()
    assert calls == [5, 5]
    learner.eval()
    with torch.no_grad():
        after = learner(images)
        fresh = learner.logits_from(learner.image_features(images), original(learner.token_embeddings, learner.eot))
    assert calls == [5, 5, 5]  # recomputed after the step (the official cache would be stale)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    assert not torch.allclose(after, first)
    learner.set_classnames(["cat", "dog"])
    with torch.no_grad():
        assert learner(images).shape == (3, 2)
    assert calls == [5, 5, 5, 2]


# ----- parameters, config, official names -------------------------------------------------------
def test_parameter_names_shapes_count_and_init() -> None:
    torch.manual_seed(0)
    with torch.device("meta"):
        big = CLIP(get_config("ViT-B/16"))
    learner = create_learner("mma", big, ["cat"], {})  # the vit_b16_ep5 defaults: 5..12, r 32
    assert sum(p.numel() for p in learner.trainable_parameters()) == 674_560
    tiny = CLIP(get_config("tiny-parity"))
    learner = create_learner("mma", tiny, ["cat"], {"adapter_start": 4, "adapter_end": 10})
    params = dict(learner.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert sum(params[n].numel() for n in trainable) == 95_200
    assert all(n.startswith("trainable.") for n in trainable)
    assert params["trainable.text_adapter.4.down.0.weight"].shape == (32, 64)
    assert params["trainable.visual_adapter.10.up.weight"].shape == (128, 32)
    assert params["trainable.shared_adapter.7.0.weight"].shape == (32, 32)
    assert "trainable.text_adapter.3.down.0.weight" not in params
    for name, std in (("text_adapter.{}.down.0", 0.25), ("visual_adapter.{}.up", (2 / 128) ** 0.5),
                      ("text_adapter.{}.up", (2 / 64) ** 0.5), ("shared_adapter.{}.0", 0.25)):
        weights = torch.cat([params[f"trainable.{name.format(i)}.weight"].flatten() for i in range(4, 11)])
        assert abs(float(weights.detach().std()) / std - 1) < 0.05, name
        assert all(not params[f"trainable.{name.format(i)}.bias"].any() for i in range(4, 11))


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="adapter_start must be an integer >= 0, got -1"):
        make_config("mma", {"adapter_start": -1})
    with pytest.raises(ValueError, match="adapter_end .* must be >= mma.adapter_start"):
        make_config("mma", {"adapter_start": 6, "adapter_end": 5})
    with pytest.raises(ValueError, match="adapter_scale must be a positive number"):
        make_config("mma", {"adapter_scale": 0})
    tiny = CLIP(get_config("tiny"))
    with pytest.raises(ValueError, match="adapter_end = 12 is beyond the model's 4 layers"):
        create_learner("mma", tiny, ["cat"], {})
    with pytest.raises(ValueError, match="equals the text width"):
        create_learner("mma", tiny, ["cat"], {**SMALL, "adapter_dim": 64})


def test_official_config_and_names() -> None:
    nested = {"TRAINER.MMADAPTER": {"TEXT_CTX_INIT": "a photo of a", "ADAPTER_START": 4, "ADAPTER_END": 10,
                                    "ADAPTER_DIM": 32, "ADAPTER_SCALE": 0.001, "PREC": "amp"},
              "OPTIM": {"LR": 0.0015}}
    config = config_from_official("mma", nested)
    assert (config.text_ctx_init, config.adapter_start, config.adapter_end) == ("a photo of a", 4, 10)
    assert (config.adapter_dim, config.adapter_scale) == (32, 0.001)
    assert config_from_official("mma", {"ADAPTER_START": 3, "ADAPTER_END": 4}).adapter_start == 3
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("mma", {"ADAPTER_STRAT": 3})
    from mmprompt.methods import official_to_ours

    assert official_to_ours("mma", "adapter_learner.text_adapter.5.down.0.weight") == \
        "trainable.text_adapter.5.down.0.weight"
    assert official_to_ours("mma", "visual_adapter.12.up.bias") == "trainable.visual_adapter.12.up.bias"
    assert official_to_ours("mma", "shared_adapter.7.0.weight") == "trainable.shared_adapter.7.0.weight"
    assert official_to_ours("mma", "token_embedding") is None
    assert official_to_ours("mma", "tokenized_prompts") is None


# ----- checkpoints ----------------------------------------------------------------------------------
def test_prompt_checkpoint_holds_the_adapters_and_works_with_new_class_names(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    tiny = CLIP(get_config("tiny")).eval()
    learner = create_learner("mma", tiny, ["cat", "dog", "tiny_bird"], {**SMALL, "adapter_scale": 0.5})
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = save_prompts(learner, tmp_path / "ckpt", clip_info={"name": "tiny", "sha256": "0" * 64})
    keys = set(load_file(str(out / "prompts.safetensors")))
    assert keys == {n for n, p in learner.named_parameters() if p.requires_grad}
    assert all(".".join(k.split(".")[1:2]) in ("text_adapter", "visual_adapter", "shared_adapter") for k in keys)
    assert read_prompt_meta(out)["config"]["adapter_scale"] == 0.5
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        restored = load_prompts(out, tiny).eval()
        torch.testing.assert_close(restored(images), learner.eval()(images), rtol=0, atol=0)
        novel = load_prompts(out, tiny, classnames=["horse", "frog"]).eval()
        direct = create_learner("mma", tiny, ["horse", "frog"], {**SMALL, "adapter_scale": 0.5})
        direct.load_prompt_state_dict(learner.prompt_state_dict())
        torch.testing.assert_close(novel(images), direct.eval()(images), rtol=0, atol=0)
        assert novel(images).shape == (2, 2)


def test_import_official_gives_reference_logits(tmp_path: Path) -> None:
    """A Dassl checkpoint in MMA's layout (folder ``adapter_learner``, names without that prefix, plus the
    buffers ``token_embedding`` and ``tokenized_prompts``) converts and reproduces the official logits."""
    ref = load_reference(REFERENCE)
    prefix = "mma/param/adapter_learner."
    state = {k[len(prefix):]: torch.from_numpy(v) for k, v in ref.arrays.items() if k.startswith(prefix)}
    assert len(state) == 7 * 10
    state["token_embedding"] = torch.zeros(5, 77, 64)
    state["tokenized_prompts"] = torch.zeros(5, 77, dtype=torch.long)
    folder = tmp_path / "official" / "adapter_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 5, "optimizer": {}, "scheduler": {}}, folder / "model.pth.tar-5")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "official"), "--method", "mma", "-o", str(out),
                 "--arch", "tiny-parity"]) == 0
    meta = json.loads((out / "prompts.json").read_text())
    assert meta["method"] == "mma"
    assert {k: meta["config"][k] for k in ("adapter_start", "adapter_end", "adapter_dim")} == {
        "adapter_start": 4, "adapter_end": 10, "adapter_dim": 32}
    learner = load_prompts(out, reference_clip(ref), classnames=ref.meta["classnames"]).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays["mma/logits"]), rtol=1e-4, atol=1e-4)
    assert np.abs(ref.arrays["mma/logits"]).max() > 0


# ----- the commands ----------------------------------------------------------------------------------
def test_speed_command_runs_mma(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["speed", "--method", "mma", "--random-weights", "--arch", "tiny", "--classes", "10", "--steps", "1",
                 "--warmup", "0", "--eval-images", "2", "--no-isolate", "--option", "adapter_start=2",
                 "--option", "adapter_end=4", "--json"])
    assert code == 0
    [entry] = json.loads(capsys.readouterr().out)["results"]
    for path in ("default", "reference"):
        assert entry[path]["error"] == "" and entry[path]["train_step_s"] > 0
    assert entry["default"]["prompt_tokens"]["shared"] == 5
    assert entry["comparison"]["first_loss_abs_diff"] < 1e-4


def test_train_on_the_demo_world(tmp_path: Path) -> None:
    from mmprompt.demo import generate_demo_dataset

    generate_demo_dataset(tmp_path / "data", seed=0)
    out = tmp_path / "run"
    argv = ["train", "--method", "mma", "--dataset", "mmprompt_demo", "--data-root", str(tmp_path / "data"),
            "--clip", "demo", "--output", str(out), "--num-workers", "0", "--no-progress", "--set",
            "optim.epochs=1", "method.adapter_start=2", "method.adapter_end=4"]
    assert main(argv) == 0
    meta = read_prompt_meta(out)
    assert meta["method"] == "mma" and meta["config"]["adapter_end"] == 4


def test_reduced_precision_training_runs_and_stays_close(batch) -> None:  # noqa: ANN001
    """Under bf16 autocast the adapters run in bf16; their 1/s gradient scaling happens on the fp32 weights."""
    images, labels = batch
    torch.manual_seed(0)
    tiny = CLIP(get_config("tiny")).eval().requires_grad_(False)
    learner = create_learner("mma", tiny, NAMES, {**SMALL, "adapter_scale": 0.5})
    _, grads32 = train_step(learner, images.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, grads16 = train_step(learner, images.float(), labels)
        learner.eval()
        with torch.no_grad():
            assert learner(images.float()).shape == (3, 5)
    assert all(g.dtype == torch.float32 and g.isfinite().all() for g in grads16)
    flat16, flat32 = torch.cat([g.flatten() for g in grads16]), torch.cat([g.flatten() for g in grads32])
    assert F.cosine_similarity(flat16, flat32, dim=0) > 0.95
