"""MMA with ``adapter_start`` 0 (an official option no official config uses, so no reference file holds it):
checked against a straightforward computation of the official formula, written here from the official
code's semantics, on the tiny CLIP of mma_reference.npz in float64.

Index 0 adds ``s * A_text,0(e)`` to the raw token embeddings (before the positional embedding, no LayerNorm)
and ``s * A_visual,0(z)`` to the vision tokens after ``ln_pre``; neither is wrapped in the gradient-scale
layers, so index-0 parameters get the plain gradient while blocks 1..END get plain / s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmprompt.checkpoint import load_prompts, save_prompts
from mmprompt.clip.model import CLIP
from mmprompt.methods import create_learner
from mmprompt.parity import load_reference, reference_clip

REFERENCE = Path(__file__).parent / "data" / "mma_reference.npz"
SCALE = 0.25
TIGHT = {"rtol": 1e-5, "atol": 1e-6}  # the CLIP's LayerNorms compute in float32


@pytest.fixture(scope="module")
def ref():  # noqa: ANN201
    return load_reference(REFERENCE)


@pytest.fixture(scope="module")
def clip(ref) -> CLIP:  # noqa: ANN001
    return reference_clip(ref).double().requires_grad_(False)


def make(clip: CLIP, names: list[str], start: int, seed: int = 3):  # noqa: ANN201
    learner = create_learner("mma", clip, names, {"adapter_start": start, "adapter_end": 10,
                                                  "adapter_scale": SCALE}).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # biases start at 0: give every parameter a value of its own
        for p in learner.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return learner


def branch(params: dict[str, torch.Tensor], tower: str, i: int, z: torch.Tensor) -> torch.Tensor:
    """s * up(ReLU(W_sh ReLU(down(z)) + b_sh)) from the raw parameter tensors."""
    p = lambda name: params[f"trainable.{name}"]  # noqa: E731
    h = torch.relu(z @ p(f"{tower}_adapter.{i}.down.0.weight").T + p(f"{tower}_adapter.{i}.down.0.bias"))
    h = torch.relu(h @ p(f"shared_adapter.{i}.0.weight").T + p(f"shared_adapter.{i}.0.bias"))
    return SCALE * (h @ p(f"{tower}_adapter.{i}.up.weight").T + p(f"{tower}_adapter.{i}.up.bias"))


def attention(block, x: torch.Tensor, causal: bool) -> torch.Tensor:  # noqa: ANN001
    """Plain multi-head attention with the block's packed in-projection (no library attention code)."""
    n, length, width = x.shape
    heads = width // 64
    q, k, v = (x @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(n, length, heads, width // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5
    if causal:
        scores = scores + torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, length, width)
    return out @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def blocks(params, tower: str, resblocks, x: torch.Tensor, causal: bool) -> torch.Tensor:  # noqa: ANN001
    for i, block in enumerate(resblocks, start=1):  # every block 1..10 is adapted
        normed = F.layer_norm(x, (x.shape[-1],), block.ln_1.weight, block.ln_1.bias)
        h = x + attention(block, normed, causal)
        m = F.layer_norm(h, (h.shape[-1],), block.ln_2.weight, block.ln_2.bias)
        m = m @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        m = (m * torch.sigmoid(1.702 * m)) @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
        x = h + m + branch(params, tower, i, normed)
    return x


def official_features(clip: CLIP, params, tokens: torch.Tensor, images: torch.Tensor):  # noqa: ANN001, ANN201
    """(image features [B, E], text features [C, E]), not normalised."""
    ln = lambda x, m: F.layer_norm(x, (x.shape[-1],), m.weight, m.bias)  # noqa: E731
    e = clip.token_embedding.weight[tokens]
    e = e + branch(params, "text", 0, e)  # index 0: raw token embeddings, no LayerNorm, before positions
    t = blocks(params, "text", clip.transformer.resblocks, e + clip.positional_embedding, causal=True)
    text = ln(t[torch.arange(len(tokens)), tokens.argmax(-1)], clip.ln_final) @ clip.text_projection
    v = clip.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.conv1.stride).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(len(images), 1, -1), x], 1) + v.positional_embedding
    z = ln(x, v.ln_pre)
    z = z + branch(params, "visual", 0, z)  # index 0: after ln_pre
    image = ln(blocks(params, "visual", v.transformer.resblocks, z, causal=False)[:, 0], v.ln_post) @ v.proj
    return image, text


def official_logits(clip: CLIP, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return clip.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def test_index0_is_the_official_formula_with_plain_index0_gradients(ref, clip: CLIP) -> None:  # noqa: ANN001
    names = ref.meta["classnames"]
    images = torch.from_numpy(ref.arrays["images"]).double()
    labels = torch.from_numpy(ref.arrays["labels"])
    learner = make(clip, names, start=0)
    named = dict(learner.named_parameters())
    assert {"trainable.text_adapter.0.down.0.weight", "trainable.visual_adapter.0.up.bias",
            "trainable.shared_adapter.0.0.weight"} <= set(named)
    tokens = learner.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in names])
    plain = {n: p.detach().clone().requires_grad_(True) for n, p in named.items() if p.requires_grad}
    image, text = official_features(clip, plain, tokens, images)
    want = official_logits(clip, image, text)
    want_grads = torch.autograd.grad(F.cross_entropy(want, labels), list(plain.values()))

    learner.eval()
    with torch.no_grad():
        torch.testing.assert_close(learner.image_features(images), image.detach(), **TIGHT)
        torch.testing.assert_close(learner.text_features(), text.detach(), **TIGHT)
        torch.testing.assert_close(learner(images).double(), want.detach(), rtol=1e-6, atol=1e-6)  # fp32 logits
    learner.train()
    learner.zero_grad(set_to_none=True)
    learner(images, labels).total.backward()
    for (name, _), grad in zip(plain.items(), want_grads, strict=True):
        factor = 1.0 if ".0." in name.split("adapter", 1)[1][:3] else 1.0 / SCALE  # index 0: no scaling layer
        assert grad.abs().max() > 0, name
        rel = float((named[name].grad - grad * factor).abs().max() / (grad * factor).abs().max())
        assert rel < 1e-5, (name, rel)  # a wrong factor (1 vs 1/s = 4) is off by 0.75 or 3

    # index 0 does change the model: the same blocks 1..10 without it give other logits
    without = make(clip, names, start=1)
    without.load_prompt_state_dict({n: p for n, p in learner.prompt_state_dict().items()
                                    if not n.split("adapter.")[1].startswith("0.")})
    with torch.no_grad():
        assert (without.eval()(images).double() - want).abs().max() > 1e-3


def test_index0_checkpoints_and_fast_paths(ref, clip: CLIP, tmp_path: Path) -> None:  # noqa: ANN001
    names = ref.meta["classnames"]
    images = torch.from_numpy(ref.arrays["images"]).double()
    learner = make(clip, names, start=0).eval()
    with torch.no_grad():
        logits = learner(images)
        learner.encoder.truncate_text = False  # the full context: the same numbers
        torch.testing.assert_close(learner(images.clone()), logits, **TIGHT)
    save_prompts(learner, tmp_path / "run")
    loaded = load_prompts(tmp_path / "run", clip, classnames=names).double().eval()
    assert loaded.config.adapter_start == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), logits, **TIGHT)
