"""The fast paths compute the same numbers as the reference semantics, for every method.

* truncated text (each prompt up to its EOT, packed, the shared prefix once) == the full 77-token
  context;
* frozen weights cast once under autocast == autocast's own casts;
* class text features cached once for evaluation == re-encoding them for every batch;
* class prompts encoded in (length-sorted) chunks with activation checkpointing == all at once,
  for the loss and every gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP, build_model
from mmprompt.methods import base, create_learner
from mmprompt.methods.base import PromptLearner
from mmprompt.methods.contract import EncoderOptions
from mmprompt.parity import run_parity

REFERENCE = Path(__file__).parent / "data" / "official_reference.npz"
TIGHT = {"rtol": 1e-5, "atol": 1e-6}

# Names of very different token lengths, so that truncation and length-sorted chunks matter.
CLASSNAMES = [
    "cat",
    "golden_retriever",
    "great white shark",
    "Chesapeake Bay retriever with a spotted collar",
    "x",
    "hen of the woods",
    "pomegranate",
]

# (method, options) for every method and the variants whose text assembly differs.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "zeroshot": ("zeroshot", {}),
    "zeroshot_ensemble": ("zeroshot", {"templates": ["a photo of a {}.", "art of the {}.", "itap of a {}."]}),
    "coop_end": ("coop", {"n_ctx": 4}),
    "coop_init": ("coop", {"ctx_init": "a photo of a"}),
    "coop_middle": ("coop", {"n_ctx": 4, "class_token_position": "middle"}),
    "coop_front": ("coop", {"n_ctx": 3, "class_token_position": "front"}),
    "coop_csc_end": ("coop", {"n_ctx": 4, "class_specific": True}),
    "coop_csc_middle": ("coop", {"n_ctx": 4, "class_specific": True, "class_token_position": "middle"}),
    "coop_csc_front": ("coop", {"n_ctx": 2, "class_specific": True, "class_token_position": "front"}),
    "cocoop": ("cocoop", {"image_chunk_size": 2}),
    "vpt": ("vpt", {"n_ctx_vision": 4, "depth_vision": 4}),
    "language_only": ("language_only", {"n_ctx_text": 4, "depth_text": 4}),
    "ivlp": ("ivlp", {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 3, "depth_vision": 4}),
    "maple": ("maple", {"depth": 3}),
    "maple_random_init": ("maple", {"n_ctx": 5, "depth": 4, "ctx_init": ""}),
}
TEXT_PROMPT_CASES = [c for c, (m, _) in CASES.items() if m not in ("zeroshot", "vpt")]
UNCHUNKED = {"text_chunk_size": 0, "text_chunk_tokens": 0}
ENCODER_FIELDS = {f.name for f in dataclasses.fields(EncoderOptions)}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and much faster on a machine shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip() -> CLIP:
    """The tiny CLIP in float64, so that the comparisons see the algorithm, not fp32 rounding."""
    torch.manual_seed(0)
    return build_model(get_config("tiny")).double().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5])
    return images, labels


def make(clip: CLIP, case: str, source: PromptLearner | None = None, **overrides: Any) -> PromptLearner:
    """A learner for ``case``; its prompts are copied from ``source`` or randomised (not left at init)."""
    method, options = CASES[case]
    torch.manual_seed(2)
    encoder = EncoderOptions(**{k: v for k, v in overrides.items() if k in ENCODER_FIELDS})
    values = {**options, **{k: v for k, v in overrides.items() if k not in ENCODER_FIELDS}}
    learner = create_learner(method, clip, CLASSNAMES, values, encoder=encoder)
    if source is not None:
        learner.load_prompt_state_dict(source.prompt_state_dict())
    else:
        with torch.no_grad():
            for p in learner.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
    return learner


def loss_and_grads(
    learner: PromptLearner, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    learner.train()
    learner.zero_grad(set_to_none=True)
    loss = F.cross_entropy(learner(images), labels)
    if loss.requires_grad:
        loss.backward()
    grads = {
        n: p.grad.clone() for n, p in learner.named_parameters() if p.requires_grad and p.grad is not None
    }
    return loss.detach(), grads


def assert_same_training(
    a: PromptLearner, b: PromptLearner, images: torch.Tensor, labels: torch.Tensor
) -> None:
    loss_a, grads_a = loss_and_grads(a, images, labels)
    loss_b, grads_b = loss_and_grads(b, images, labels)
    torch.testing.assert_close(loss_a, loss_b, **TIGHT)
    assert grads_a.keys() == grads_b.keys()
    assert len(grads_a) == len(a.trainable_parameters())
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **TIGHT, msg=lambda m, n=name: f"{n}: {m}")


def eval_logits(learner: PromptLearner, images: torch.Tensor) -> torch.Tensor:
    learner.eval()
    with torch.no_grad():
        return learner(images)


# ----- truncated text == full context -------------------------------------------------------------
def test_clip_encode_text_truncation_is_exact(clip: CLIP) -> None:
    from mmprompt.clip.tokenizer import get_tokenizer

    tokens = get_tokenizer()([f"a photo of a {c}." for c in CLASSNAMES], context_length=77)
    with torch.no_grad():
        torch.testing.assert_close(
            clip.encode_text(tokens, truncate=True), clip.encode_text(tokens, truncate=False), **TIGHT
        )


@pytest.mark.parametrize("causal", [True, False])
def test_last_block_at_output_rows_equals_full_block(clip: CLIP, causal: bool) -> None:
    """``output_rows``: the last block computes only the rows read (EOT / class token), same numbers."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 11, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([10, 3, 0, 7, 10])
    deep = [None, torch.randn(2, 64, dtype=torch.float64, generator=gen, requires_grad=True)]
    full = clip.transformer(x, causal=causal, deep_prompts=deep)[torch.arange(5), rows]
    part = clip.transformer(x, causal=causal, deep_prompts=deep, output_rows=rows)
    assert part.shape == (5, 1, 64)
    torch.testing.assert_close(part[:, 0], full, **TIGHT)
    g_full = torch.autograd.grad(full.square().sum(), [x, deep[1]])
    g_part = torch.autograd.grad(part.square().sum(), [x, deep[1]])
    for a, b in zip(g_part, g_full, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def test_reduced_precision_training_runs_on_cpu(clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """bf16 autocast (causal attention on the math kernel) trains and stays close to fp32."""
    images, labels = batch
    learner = make(clip, "maple")
    clip32 = build_model(get_config("tiny"))
    clip32.load_state_dict(clip.state_dict())
    fp32 = make(clip32.eval().requires_grad_(False), "maple", source=learner)
    loss32, grads32 = loss_and_grads(fp32, images.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, grads16 = loss_and_grads(fp32, images.float(), labels)
    torch.testing.assert_close(loss16, loss32, rtol=0.05, atol=0.05)
    assert grads16.keys() == grads32.keys() and all(g.isfinite().all() for g in grads16.values())


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_truncated_text_equals_full_context(
    clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor], case: str, share: bool
) -> None:
    images, labels = batch
    full = make(clip, case, truncate_text=False, **UNCHUNKED)
    short = make(clip, case, source=full, truncate_text=True, share_text_prefix=share, **UNCHUNKED)
    torch.testing.assert_close(eval_logits(short, images), eval_logits(full, images), **TIGHT)
    assert_same_training(short, full, images, labels)
    if case in TEXT_PROMPT_CASES:
        assert (short.last_text_shared_prefix > 0) == share


def _padded_reference(
    transformer: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor, deep: list[torch.Tensor | None], start: int
) -> torch.Tensor:
    """The plain computation: every position of every sequence, read at ``lengths - 1``."""
    out = transformer(x, causal=True, deep_prompts=deep, prompt_start=start)
    return out[torch.arange(x.shape[0]), lengths - 1]


@pytest.mark.parametrize(
    ("prefix", "start", "per_sequence"),
    [(0, 1, False), (0, 2, True), (4, 1, False), (4, 4, False), (3, 0, False)],
)
def test_packed_forward_equals_padded(clip: CLIP, prefix: int, start: int, per_sequence: bool) -> None:
    """``forward_last``: packed positions, a shared prefix computed once, deep prompts inside the prefix
    or after it (one set or one per sequence): the padded full computation's outputs and gradients."""
    gen = torch.Generator().manual_seed(4)
    n, length, width = 6, 13, 64
    head = torch.randn(1, prefix, width, generator=gen, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(n, length - prefix, width, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.cat([head.expand(n, -1, -1), tail], dim=1)  # the promise made by shared_prefix
    lengths = torch.tensor([13, 5, 9, 6, 13, 7])
    shape = (n, 2, width) if per_sequence else (2, width)
    deep = [None, *(torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))]
    packed = clip.transformer.forward_last(x, lengths, deep_prompts=deep, prompt_start=start, shared_prefix=prefix)
    padded = _padded_reference(clip.transformer, x, lengths, deep, start)
    assert packed.shape == (n, width)
    torch.testing.assert_close(packed, padded, **TIGHT)
    leaves = [head, tail, *deep[1:]] if prefix else [tail, *deep[1:]]
    weights = torch.randn(n, width, generator=gen, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad((packed * weights).sum(), leaves),
        torch.autograd.grad((padded * weights).sum(), leaves),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **TIGHT)


def test_packed_forward_rejects_what_it_cannot_share(clip: CLIP) -> None:
    x = torch.randn(3, 8, 64, dtype=torch.float64)
    lengths = torch.tensor([8, 4, 6])
    with pytest.raises(ValueError, match="shared prefix 4"):
        clip.transformer.forward_last(x, lengths, shared_prefix=4)  # a sequence of 4 has no own position
    deep = [None, torch.randn(3, 64, dtype=torch.float64)]
    with pytest.raises(ValueError, match="straddle"):
        clip.transformer.forward_last(x, lengths, deep_prompts=deep, prompt_start=1, shared_prefix=2)
    per_sequence = [None, torch.randn(3, 1, 64, dtype=torch.float64)]
    with pytest.raises(ValueError, match="differ per sequence"):
        clip.transformer.forward_last(x, lengths, deep_prompts=per_sequence, prompt_start=1, shared_prefix=3)
    with pytest.raises(ValueError, match="needs truncate"):
        clip.encode_text_embeddings(x, lengths - 1, truncate=False, shared_prefix=2)


def test_shared_prefix_lengths_of_the_methods(clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The shared prefix is what all prompts really share: SOT, the context, common words."""
    images, _ = batch
    n_word = len(make(clip, "maple").tokenize(["of a"])[0].nonzero()) - 2  # without SOT / EOT
    expected = {
        "maple": 1 + 2 + n_word,  # SOT, n_ctx = 2 context vectors ("a photo"), then "of a"
        "maple_random_init": 1 + 5,
        "coop_end": 1 + 4,
        "coop_middle": 1 + 2,  # the class name comes after half of the context
        "coop_front": 1,  # SOT only
        "coop_csc_end": 1,  # class-specific context differs from the first context token on
        "cocoop": 1 + 4,  # the context depends on the image: a prefix per image (the rows hold 3)
        "language_only": 1 + 4,
    }
    for case, p in expected.items():
        learner = make(clip, case, **({"image_chunk_size": 3} if case == "cocoop" else {}))
        learner.eval()
        with torch.no_grad():
            learner(images) if case == "cocoop" else learner.text_features()
        assert learner.last_text_shared_prefix == p, case
    embeddings = torch.zeros(2, 6, 4)
    deep = [None, torch.zeros(3, 4)]
    assert base.shared_prefix_length(embeddings, torch.tensor([5, 5]), deep, prompt_start=1) == 5
    # positions 1..4 do not fit before the EOT at 3: the prefix stops where the prompts start (after SOT),
    # which forward_last accepts (the prompts then lie after the prefix)
    assert base.shared_prefix_length(embeddings, torch.tensor([3, 5]), deep, prompt_start=1) == 1
    per_row = [None, torch.zeros(2, 3, 4)]  # per-row prompts cannot be shared either
    assert base.shared_prefix_length(embeddings, torch.tensor([5, 5]), per_row, prompt_start=1) == 1
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    x[1, 0] = x[0, 0]
    lengths = torch.tensor([4, 6])
    deep64 = [None, torch.randn(3, 64, dtype=torch.float64)]
    torch.testing.assert_close(
        clip.transformer.forward_last(x, lengths, deep_prompts=deep64, prompt_start=1, shared_prefix=1),
        _padded_reference(clip.transformer, x, lengths, deep64, 1),
        **TIGHT,
    )
    assert base.shared_prefix_length(embeddings[:1], torch.tensor([5]), deep) == 0
    embeddings[1, 2, 0] = 1.0
    assert base.shared_prefix_length(embeddings, torch.tensor([5, 5])) == 2
    four = torch.zeros(4, 6, 4)
    four[2:, 1:3] = 1.0  # two groups of two rows, each group the same inside
    four[1, 4] = four[3, 4] = 2.0
    assert base.shared_prefix_length(four, torch.tensor([5] * 4), groups=2) == 4
    assert base.shared_prefix_length(four, torch.tensor([5] * 4)) == 1
    with pytest.raises(ValueError, match="groups"):
        base.shared_prefix_length(four, torch.tensor([5] * 4), groups=3)


def test_prefix_groups_equal_padded(clip: CLIP) -> None:
    """``prefix_groups``: one shared prefix per group of consecutive sequences (CoCoOp's images)."""
    gen = torch.Generator().manual_seed(6)
    groups, per, length, width, p = 3, 4, 12, 64, 5
    heads = torch.randn(groups, 1, p, width, generator=gen, dtype=torch.float64, requires_grad=True)
    tails = torch.randn(groups * per, length - p, width, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.cat([heads.expand(-1, per, -1, -1).reshape(groups * per, p, width), tails], dim=1)
    lengths = torch.randint(p + 1, length + 1, (groups * per,), generator=gen)
    packed = clip.transformer.forward_last(x, lengths, shared_prefix=p, prefix_groups=groups)
    padded = _padded_reference(clip.transformer, x, lengths, [], 1)
    torch.testing.assert_close(packed, padded, **TIGHT)
    for a, b in zip(
        torch.autograd.grad(packed.square().sum(), [heads, tails]),
        torch.autograd.grad(padded.square().sum(), [heads, tails]),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **TIGHT)
    with pytest.raises(ValueError, match="groups of equal size"):
        clip.transformer.forward_last(x, lengths, shared_prefix=p, prefix_groups=5)


@pytest.mark.parametrize("kind", ["none", "causal", "mask"])
def test_low_precision_cpu_attention_is_sdpa_within_rounding(kind: str) -> None:
    """Training in bf16 on CPU, attention is computed explicitly (products in bf16, softmax in fp32)."""
    from mmprompt.clip.model import attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=gen, requires_grad=True) for _ in range(3))
    mask = None
    if kind == "mask":
        mask = torch.rand(2, 1, 7, 7, generator=gen) < 0.6
        mask |= torch.eye(7, dtype=torch.bool)  # every query attends somewhere
    causal = kind == "causal"
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    low = [t.detach().bfloat16().requires_grad_(True) for t in (q, k, v)]
    out = attention(*low, mask=mask, causal=causal)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.03, atol=0.03)
    weights = torch.randn(expected.shape, generator=gen)
    grads = torch.autograd.grad((expected * weights).sum(), [q, k, v])
    low_grads = torch.autograd.grad((out.float() * weights).sum(), low)
    for a, b in zip(low_grads, grads, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05)
    with torch.no_grad():  # inference keeps PyTorch's kernel
        torch.testing.assert_close(
            attention(*(t.detach() for t in low), mask=mask, causal=causal),
            F.scaled_dot_product_attention(*(t.detach() for t in low), attn_mask=mask, is_causal=causal),
        )


# ----- frozen weights cast once under autocast ----------------------------------------------------
def test_frozen_casts_equal_autocast_and_follow_the_weights(
    batch: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmprompt.clip import model as model_module

    images, labels = batch
    torch.manual_seed(0)
    clip32 = build_model(get_config("tiny")).eval().requires_grad_(False)
    learner = make(clip32, "maple")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.inference_mode():  # casts made in inference mode ...
            first = learner(images.float())
        loss, grads = loss_and_grads(learner, images.float(), labels)  # ... serve training
        block = clip32.visual.transformer.resblocks[0]
        cached = model_module.frozen_cast(block.attn, "in_proj_weight")
        assert cached.dtype == torch.bfloat16
        assert model_module.frozen_cast(block.attn, "in_proj_weight") is cached  # made once
    assert model_module.frozen_cast(block.attn, "in_proj_weight") is block.attn.in_proj_weight  # autocast off
    monkeypatch.setattr(model_module, "frozen_cast", lambda module, name: getattr(module, name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.inference_mode():
            plain = learner(images.float())
        loss_plain, grads_plain = loss_and_grads(learner, images.float(), labels)
    monkeypatch.undo()
    assert torch.equal(first, plain)  # the very same casts
    assert torch.equal(loss, loss_plain) and all(torch.equal(grads[k], grads_plain[k]) for k in grads)
    with torch.no_grad():
        block.attn.in_proj_weight.mul_(2.0)  # a changed weight is cast again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = model_module.frozen_cast(block.attn, "in_proj_weight")
    assert again is not cached and torch.equal(again, block.attn.in_proj_weight.to(torch.bfloat16))


@pytest.mark.parametrize("case", ["zeroshot", "zeroshot_ensemble", "vpt"])
def test_fixed_text_features_equal_full_context(clip: CLIP, case: str) -> None:
    """Zero-shot and VPT encode a fixed template once (``clip.encode_text``, truncated): same as 77 tokens."""
    import torch.nn.functional as nnf

    learner = make(clip, case)
    method, options = CASES[case]
    templates = options.get("templates", ["a photo of a {}."])
    names = [c.replace("_", " ") for c in CLASSNAMES]
    with torch.no_grad():
        feats = [
            clip.encode_text(learner.tokenize([t.format(n) for n in names]), truncate=False).float()
            for t in templates
        ]
    if method == "zeroshot":
        mean = torch.stack([nnf.normalize(f, dim=-1) for f in feats]).mean(0)
        expected = nnf.normalize(mean, dim=-1)
    else:
        expected = feats[0]
    torch.testing.assert_close(learner.text_features(), expected, **TIGHT)


# ----- cached class text features == per-batch recomputation --------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_cached_text_features_equal_recomputation(
    clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor], case: str
) -> None:
    images, _ = batch
    learner = make(clip, case)
    learner.eval()
    cached = learner.class_text_features()
    if learner.image_conditioned_text:
        assert cached is None
    else:
        assert cached is not None and cached.shape[0] == len(CLASSNAMES)
        assert not cached.requires_grad
    with torch.inference_mode():
        fast = torch.cat([learner.predict_logits(images[i : i + 2], cached) for i in range(0, 3, 2)])
    with torch.no_grad():
        slow = torch.cat([learner.predict_logits(images[i : i + 2], None) for i in range(0, 3, 2)])
    torch.testing.assert_close(fast, slow, **TIGHT)


# ----- chunked + checkpointed == all at once ------------------------------------------------------
CHUNKINGS = {
    "size2": ({"text_chunk_size": 2}, True),
    "size2_full_context": ({"text_chunk_size": 2}, False),
    "auto_tokens40": ({"text_chunk_size": 0, "text_chunk_tokens": 40}, True),
}


@pytest.mark.parametrize("case", TEXT_PROMPT_CASES)
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_chunked_checkpointed_equals_unchunked(
    clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor], case: str, chunking: str
) -> None:
    images, labels = batch
    options, truncate = CHUNKINGS[chunking]
    whole = make(clip, case, truncate_text=truncate, **UNCHUNKED)
    chunked = make(clip, case, source=whole, truncate_text=truncate, **options)
    chunks = chunked.text_chunks(chunked.eot, 77)
    assert chunks is not None and len(chunks) > 1  # the test really chunks
    torch.testing.assert_close(eval_logits(chunked, images), eval_logits(whole, images), **TIGHT)
    assert_same_training(chunked, whole, images, labels)


def test_text_chunks_cover_rows_once_and_respect_the_budget(clip: CLIP) -> None:
    learner = make(clip, "maple", text_chunk_tokens=40)
    eot = learner.eot
    chunks = learner.text_chunks(eot, 77)
    assert chunks is not None
    rows = torch.cat(chunks)
    assert sorted(rows.tolist()) == list(range(len(CLASSNAMES)))
    lengths = eot + 1
    for idx in chunks:
        assert len(idx) == 1 or int(lengths[idx].sum()) <= 40
    runs = [int(lengths[idx].max()) for idx in chunks]
    assert runs == sorted(runs)  # length-sorted: short prompts are encoded together
    assert learner.text_chunks(eot, 77) is not None
    everything = make(clip, "maple", text_chunk_tokens=10_000)
    assert everything.text_chunks(eot, 77) is None
    sized = make(clip, "maple", text_chunk_size=3)
    assert make(clip, "maple", truncate_text=False, text_chunk_tokens=160).text_chunks(eot, 77) is not None
    assert [len(c) for c in sized.text_chunks(eot, 77)] == [3, 3, 1]


def test_default_config_chunks_large_class_sets_only(clip: CLIP) -> None:
    learner = make(clip, "maple")
    assert learner.encoder.text_chunk_size == 0 and learner.encoder.text_chunk_tokens > 0
    assert learner.text_chunks(learner.eot, 77) is None  # 7 short prompts: all at once
    many = torch.full((5000,), 12)
    assert learner.text_chunks(many, 77) is not None


# ----- the official reference still holds on every path -------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"text_chunk_size": 2},
        {"truncate_text": False},
        {"truncate_text": False, "text_chunk_size": 2},
        {"text_chunk_tokens": 16},
        {"share_text_prefix": False},
    ],
)
def test_parity_holds_on_every_path(overrides: dict[str, Any]) -> None:
    results = run_parity(REFERENCE, encoder=EncoderOptions(**overrides))
    failures = [(r.case, r.error or [c.name for c in r.checks if not c.ok]) for r in results if not r.ok]
    assert not failures, failures
