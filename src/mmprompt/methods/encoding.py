"""How a prompt learner runs text through the frozen CLIP: the machinery behind the contract.

:class:`TextEncoding` is mixed into :class:`~mmprompt.methods.learner.PromptLearner`, so every learner has
these as methods: tokenisation and frozen token embeddings of class prompts (:meth:`~TextEncoding.tokenize`,
:meth:`~TextEncoding.embed_prompts`, :meth:`~TextEncoding.init_words`), the text encoder with its exact fast
paths (:meth:`~TextEncoding.encode_text`: EOT truncation, the shared prefix of
:func:`shared_prefix_length`, checkpointed chunks of :meth:`~TextEncoding.text_chunks`), and the frozen
zero-shot teachers with their per-class-list cache (:meth:`~TextEncoding.teacher_text_features`,
:meth:`~TextEncoding.teacher_image_features`). A method calls them; it does not override them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..clip.model import CLIP, BlockAdapters, BlockWeightDeltas, DeepPrompts, PackedLayout
from ..clip.tokenizer import Tokenizer
from .contract import EncoderOptions

logger = logging.getLogger(__name__)

__all__ = ["TextEncoding", "clean_classnames", "shared_prefix_length"]


def clean_classnames(classnames: Sequence[str]) -> list[str]:
    """Class names as the methods use them: underscores become spaces."""
    names = [str(c).replace("_", " ") for c in classnames]
    if not names:
        raise ValueError("at least one class name is needed")
    return names


def shared_prefix_length(
    embeddings: Tensor,
    eot: Tensor,
    deep_prompts: DeepPrompts | None = None,
    prompt_start: int = 1,
    groups: int = 1,
    eot_min: int | None = None,
) -> int:
    """The number of leading positions of ``embeddings`` [N, L, D] that are equal in every row (of
    each of ``groups`` consecutive groups of rows) and precede every EOT (``eot`` [N]), cut before any
    deep prompt that would straddle them or differ per row (0 when the groups have fewer than 2 rows).

    Under the causal mask those positions have the same states in every prompt at every block, so
    the text encoder can compute them once (``shared_prefix`` of ``CLIP.encode_text_embeddings``).
    ``eot_min``: ``int(eot.min())`` when the caller knows it (one read from the device fewer).
    """
    n, _, width = embeddings.shape
    if groups < 1 or n % groups:
        raise ValueError(f"{n} prompts do not form {groups} groups of equal size")
    if n // groups < 2:
        return 0
    with torch.no_grad():
        limit = int(eot.min()) if eot_min is None else int(eot_min)
        head = embeddings[:, :limit].reshape(groups, n // groups, limit, width)
        same = (head == head[:, :1]).all(dim=3).all(dim=1).all(dim=0)  # [limit]
        differs = torch.cat([~same, same.new_ones(1)])  # the first differing position, or limit: one read
        p = int(differs.to(torch.int8).argmax())
    for prompts in deep_prompts or ():  # the rule of Transformer.forward_last: inside as one set, or after
        if prompts is None:
            continue
        one_set = prompts.dim() == 2 or prompts.shape[0] == 1
        if not (one_set and prompt_start + prompts.shape[-2] <= p):
            p = min(p, max(prompt_start, 0))
    return p


class TextEncoding:
    """Text-encoding methods of a prompt learner (a mixin of :class:`~mmprompt.methods.learner.PromptLearner`,
    which sets these attributes in its constructor)."""

    method: ClassVar[str]
    clip: CLIP
    tokenizer: Tokenizer
    encoder: EncoderOptions
    classnames: list[str]
    last_text_shared_prefix: int
    _teacher_cache: dict[tuple[Any, ...], Tensor]
    _said_slow: bool

    def block_adapters(self) -> tuple[BlockAdapters | None, BlockAdapters | None]:  # the learner's hook
        raise NotImplementedError

    def active_weight_adapters(self) -> tuple[BlockWeightDeltas | None, BlockWeightDeltas | None]:  # the learner's
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        device = self.clip.token_embedding.weight.device
        return self.tokenizer(list(texts), context_length=self.clip.config.text.context_length).to(device)

    def embed_prompts(self, prefix: str, classnames: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokens [C, L] and frozen token embeddings [C, L, Dt] of ``"{prefix} {name}."`` per class."""
        texts = [f"{prefix} {name}." if prefix else f"{name}." for name in classnames]
        tokens = self.tokenize(texts)
        with torch.no_grad():
            embeddings = self.clip.token_embedding(tokens).float()
        return tokens, embeddings

    def init_words(self, text: str, n_ctx: int) -> Tensor:
        """Token embeddings [n_ctx, Dt] of the first ``n_ctx`` tokens of ``text`` (after SOT)."""
        tokens = self.tokenize([text])
        with torch.no_grad():
            start = self.clip.prompt_start
            return self.clip.token_embedding(tokens)[0, start : start + n_ctx].float().clone()

    def encode_text(
        self,
        embeddings: Tensor,
        eot: Tensor,
        deep_prompts: DeepPrompts | None = None,
        prompt_start: int | None = None,
        prefix_groups: int = 1,
    ) -> Tensor:
        """Text features [N, E] from prompt embeddings [N, L, Dt], chunked and checkpointed if asked.

        ``prompt_start`` (default: the text tower's, after SOT in causal towers, 0 in towers without a
        start token) is where deep prompts go. The fast paths (truncation at the pooled token, shared
        prefix) are used only where the tower makes them exact (:attr:`CLIP.text_fast_paths_exact`).

        With ``truncate_text`` each prompt is computed only up to its EOT, packed without padding,
        and (``share_text_prefix``) the leading positions all prompts share are computed once
        (exact under the causal mask, see :meth:`CLIP.encode_text_embeddings`). ``prefix_groups``:
        the rows are that many consecutive groups whose prompts may share more within each group
        (CoCoOp: the class prompts of one image). ``deep_prompts`` entries are one set ([n, Dt]) or
        one set per prompt ([N, n, Dt], e.g. class-aware tokens); per-prompt sets follow their rows
        into the chunks.
        """
        if prompt_start is None:
            prompt_start = self.clip.prompt_start
        exact = self.clip.text_fast_paths_exact
        if not exact and (self.encoder.truncate_text or self.encoder.share_text_prefix) and not self._said_slow:
            logger.info("%s: the text tower is not causal with pooling at the last token, so each class prompt is "
                        "encoded over the full context (truncation and the shared prefix would not be exact)",
                        self.method)
            self._said_slow = True
        truncate = self.encoder.truncate_text and exact
        plan = self._text_plan(eot, embeddings.shape[1])
        chunks = plan.chunks
        groups = prefix_groups if chunks is None else 1  # chunks mix the groups' rows
        shared = 0
        if truncate and self.encoder.share_text_prefix:
            shared = shared_prefix_length(embeddings, eot, deep_prompts, prompt_start, groups, plan.eot_min)
            if shared == 0 and groups > 1:
                groups = 1
                shared = shared_prefix_length(embeddings, eot, deep_prompts, prompt_start, eot_min=plan.eot_min)
        self.last_text_shared_prefix = shared

        adapters = self.block_adapters()[1]
        weight_deltas = self.active_weight_adapters()[1]

        def run(layout: PackedLayout | None, x: Tensor, e: Tensor, *deep: Tensor | None) -> Tensor:
            return self.clip.encode_text_embeddings(
                x,
                e,
                deep_prompts=list(deep) if deep else None,
                prompt_start=prompt_start,
                truncate=truncate,
                shared_prefix=shared,
                prefix_groups=groups,
                adapters=adapters,
                weight_deltas=weight_deltas,
                layout=layout,
            )

        deep = tuple(deep_prompts) if deep_prompts is not None else ()
        if chunks is None:
            return run(plan.layout(0, shared) if truncate else None, embeddings, eot, *deep)
        checkpointed = torch.is_grad_enabled()
        outputs = []
        n = embeddings.shape[0]
        for i, idx in enumerate(chunks):
            x, e = embeddings.index_select(0, idx), plan.chunk_eot[i]
            rows = tuple(p.index_select(0, idx) if p is not None and p.dim() == 3 and p.shape[0] == n > 1 else p
                         for p in deep)  # per-prompt deep prompts follow their rows
            layout = plan.layout(i, shared) if truncate else None
            if checkpointed:
                outputs.append(checkpoint(run, layout, x, e, *rows, use_reentrant=False))
            else:
                outputs.append(run(layout, x, e, *rows))
        return torch.cat(outputs).index_select(0, plan.inverse)

    def _text_plan(self, eot: Tensor, length: int) -> _TextPlan:
        """The chunks, index tensors and packed layouts of these pooled positions, made once per ``eot``
        tensor (a learner's class-list buffer) and encoder options, and kept: a training step then reads
        nothing back from the device for them and makes none of them again."""
        options = (length, self.encoder.truncate_text, self.encoder.text_chunk_size, self.encoder.text_chunk_tokens)
        plan: _TextPlan | None = self.__dict__.get("_text_plan_kept")
        if plan is None or not plan.fits(eot, options):
            with torch.inference_mode(False), torch.no_grad():
                plan = _TextPlan(eot, options, self.text_chunks(eot, length))
            if not eot.is_inference():  # an inference tensor has no version counter to tell a change by
                self.__dict__["_text_plan_kept"] = plan
        return plan

    def text_chunks(self, eot: Tensor, length: int) -> list[Tensor] | None:
        """Row indices of each checkpointed text chunk (None: all prompts at once).

        ``text_chunk_size`` > 0 gives chunks of that many prompts; otherwise prompts are chunked
        only when they hold more than ``text_chunk_tokens`` tokens, into chunks of at most that many
        (a prompt counts up to its EOT with ``truncate_text``, else the full ``length``). With
        ``truncate_text`` prompts are taken in order of length, so each chunk's are alike.
        """
        n = eot.shape[0]
        truncate = self.encoder.truncate_text
        lengths = (eot.detach().cpu() + 1) if truncate else torch.full((n,), length)
        size, budget = self.encoder.text_chunk_size, self.encoder.text_chunk_tokens
        if size > 0:
            if n <= size:
                return None
        elif budget <= 0 or int(lengths.sum()) <= budget:
            return None
        order = torch.argsort(lengths, stable=True) if truncate else torch.arange(n)
        bounds: list[tuple[int, int]] = []
        start = tokens = 0
        host = lengths.tolist()
        for i, row in enumerate(order.tolist()):
            tokens += host[row]
            full = i - start + 1 > size if size > 0 else tokens > budget and i > start
            if full:
                bounds.append((start, i))
                start, tokens = i, host[row]
        bounds.append((start, n))
        order = order.to(eot.device)
        return [order[a:b] for a, b in bounds]

    @torch.no_grad()
    def teacher_text_features(self, templates: Sequence[str], average: str = "normalized") -> Tensor:
        """Frozen zero-shot text features [C, E] of the current classes, L2-normalised, computed once per
        class list (cached, never saved). Several templates are averaged: ``average="normalized"``
        normalises each template's features first (CLIP's usual ensemble); ``"raw"`` averages the
        unnormalised features (PromptSRC). Class names have ``_`` replaced by spaces."""
        if average not in ("normalized", "raw"):
            raise ValueError(f"average must be 'normalized' or 'raw', got {average!r}")
        return F.normalize(self.teacher_text_mean(templates, average), dim=-1)

    @torch.no_grad()
    def teacher_text_mean(self, templates: Sequence[str], average: str = "normalized") -> Tensor:
        """The template average before the final normalisation (see :meth:`teacher_text_features`)."""
        templates = tuple(templates)
        if not templates:
            raise ValueError("at least one template is needed for teacher text features")
        device = self.clip.token_embedding.weight.device
        key = ("text", templates, average, device, tuple(self.classnames))
        cached = self._teacher_cache.get(key)
        if cached is not None and (torch.is_inference_mode_enabled() or not cached.is_inference()):
            return cached
        names = clean_classnames(self.classnames)
        total: Tensor | None = None
        for template in templates:
            feats = self.clip.encode_text(self.tokenize([template.format(n) for n in names])).float()
            if average == "normalized":
                feats = F.normalize(feats, dim=-1)
            total = feats if total is None else total + feats
        assert total is not None
        mean = total / len(templates)
        self._teacher_cache[key] = mean
        return mean

    @torch.no_grad()
    def teacher_image_features(self, images: Tensor) -> Tensor:
        """Frozen zero-shot image features [B, E] of ``images`` (no prompts, no adapters), L2-normalised."""
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)


class _TextPlan:
    """What :meth:`TextEncoding.encode_text` derives from the pooled positions ``eot`` alone: the host copy of
    the prompt lengths, the chunks (row indices, their ``eot`` and the inverse order) and, per chunk and
    shared prefix, the packed layout. It holds ``eot`` itself and serves only that tensor, unchanged
    (same object, same version) and with the same encoder options."""

    def __init__(self, eot: Tensor, options: tuple[Any, ...], chunks: list[Tensor] | None) -> None:
        self.eot, self.options = eot, options
        self.version = None if eot.is_inference() else eot._version
        self._host_eot: list[int] | None = None
        self.chunks = chunks
        self.chunk_eot: list[Tensor] = []
        self.inverse: Tensor | None = None
        self.rows: list[list[int]] = [list(range(eot.shape[0]))]
        if chunks is not None:
            self.chunk_eot = [eot.index_select(0, idx) for idx in chunks]
            order = torch.cat(chunks)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            self.inverse = inverse
            self.rows = [idx.cpu().tolist() for idx in chunks]
        self._layouts: dict[tuple[int, int], PackedLayout] = {}

    @property
    def host_eot(self) -> list[int]:
        """The pooled positions on the host (read from the device once, when first needed)."""
        if self._host_eot is None:
            self._host_eot = self.eot.detach().cpu().tolist()
        return self._host_eot

    @property
    def eot_min(self) -> int:
        return min(self.host_eot)

    def fits(self, eot: Tensor, options: tuple[Any, ...]) -> bool:
        return (eot is self.eot and not eot.is_inference() and eot._version == self.version
                and options == self.options)

    def layout(self, chunk: int, shared: int) -> PackedLayout:
        """The packed layout of chunk ``chunk`` (0: all rows when unchunked) after ``shared`` positions."""
        hit = self._layouts.get((chunk, shared))
        if hit is None:
            lengths = [self.host_eot[r] + 1 - shared for r in self.rows[chunk]]
            hit = self._layouts[(chunk, shared)] = PackedLayout.from_lengths(lengths, shared, self.eot.device)
        return hit
