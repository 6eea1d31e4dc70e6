"""The fast paths compute the same numbers as the reference semantics, for every method.

* truncated text (cut after the last EOT) == the full 77-token context;
* class text features cached once for evaluation == re-encoding them for every batch;
* class prompts encoded in (length-sorted) chunks with activation checkpointing == all at once,
  for the loss and every gradient.
"""

from __future__ import annotations

import itertools
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
    learner = create_learner(method, clip, CLASSNAMES, {**options, **overrides})
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


@pytest.mark.parametrize("case", list(CASES))
def test_truncated_text_equals_full_context(
    clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor], case: str
) -> None:
    images, labels = batch
    full = make(clip, case, truncate_text=False, **UNCHUNKED)
    short = make(clip, case, source=full, truncate_text=True, **UNCHUNKED)
    torch.testing.assert_close(eval_logits(short, images), eval_logits(full, images), **TIGHT)
    assert_same_training(short, full, images, labels)


@pytest.mark.parametrize("case", TEXT_PROMPT_CASES)
def test_length_groups_equal_full_context(
    clip: CLIP, batch: tuple[torch.Tensor, torch.Tensor], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts encoded in groups of similar length (each cut short) == one 77-token batch."""
    monkeypatch.setattr(base, "LENGTH_GROUP_OVERHEAD_TOKENS", 0)  # a group per distinct length
    images, labels = batch
    full = make(clip, case, truncate_text=False, **UNCHUNKED)
    grouped = make(clip, case, source=full, truncate_text=True, **UNCHUNKED)
    lengths = grouped.eot.sort().values + 1
    assert len(base.length_groups(lengths, 0)) == len(set(lengths.tolist())) > 1
    torch.testing.assert_close(eval_logits(grouped, images), eval_logits(full, images), **TIGHT)
    assert_same_training(grouped, full, images, labels)


def test_length_groups_are_optimal_runs() -> None:
    lengths = torch.tensor([8] * 30 + [9] * 35 + [10] * 21 + [11] * 6 + [12] * 4 + [13] * 3 + [14])
    groups = base.length_groups(lengths, 64)
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(a < b for a, b in groups) and all(
        b == c for (_, b), (c, _) in zip(groups, groups[1:], strict=False)
    )

    def cost(g: list[tuple[int, int]], overhead: int) -> int:
        return sum((b - a) * int(lengths[b - 1]) + overhead for a, b in g)

    assert cost(groups, 64) < cost([(0, len(lengths))], 64)
    # brute force over every split at a change of length
    cuts = [i for i in range(1, len(lengths)) if lengths[i] != lengths[i - 1]]
    best = min(
        cost(list(zip([0, *chosen], [*chosen, len(lengths)], strict=True)), 64)
        for k in range(len(cuts) + 1)
        for chosen in itertools.combinations(cuts, k)
    )
    assert cost(groups, 64) == best
    assert base.length_groups(torch.tensor([5]), 64) == [(0, 1)]
    assert base.length_groups(torch.tensor([7, 7, 7]), 0) == [(0, 3)]


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
        assert len(idx) == 1 or len(idx) * int(lengths[idx].max()) <= 40
    runs = [int(lengths[idx].max()) for idx in chunks]
    assert runs == sorted(runs)  # length-sorted: short prompts are encoded together
    assert learner.text_chunks(eot, 77) is not None
    everything = make(clip, "maple", text_chunk_tokens=10_000)
    assert everything.text_chunks(eot, 77) is None
    sized = make(clip, "maple", text_chunk_size=3)
    assert [len(c) for c in sized.text_chunks(eot, 77)] == [3, 3, 1]


def test_default_config_chunks_large_class_sets_only(clip: CLIP) -> None:
    learner = make(clip, "maple")
    assert learner.config.text_chunk_size == 0 and learner.config.text_chunk_tokens > 0
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
    ],
)
def test_parity_holds_on_every_path(overrides: dict[str, Any]) -> None:
    results = run_parity(REFERENCE, **overrides)
    failures = [(r.case, r.error or [c.name for c in r.checks if not c.ok]) for r in results if not r.ok]
    assert not failures, failures
