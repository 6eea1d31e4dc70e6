"""One CLIP implementation, batch-first, for every size and every supported family (CLIP, SigLIP).

The encoders accept prompt tokens at explicit insertion points and know nothing about the methods
that make them:

* ``VisionTransformer.forward(images, prompts=..., deep_prompts=...)``: ``prompts`` are appended after
  the patch tokens (after the positional embedding, before ``ln_pre``); ``deep_prompts[i]``, when not
  ``None``, replaces the last ``n`` tokens of the sequence before block ``i`` runs. Pooling (class token,
  patch mean or attention pooling) reads the image's own tokens, never the prompts.
* ``CLIP.encode_text_embeddings(x, eot, deep_prompts=..., prompt_start=...)``: the caller gives the token
  embeddings (with any learned context already in place) and the pooled position of each text
  (:meth:`CLIP.text_pool_index`); ``deep_prompts[i]`` replaces positions ``prompt_start .. prompt_start + n``
  before block ``i``. :attr:`CLIP.prompt_start` says where prompts go in this text tower, and
  :attr:`CLIP.text_fast_paths_exact` whether truncation at the pooled token and a shared prefix are exact.
* Both towers also take ``adapters``: ``adapters[i]``, when not ``None``, is a function of block ``i``'s
  normalised input ``ln_1(x)`` (token-wise) whose output is added to the block's output, in parallel
  with the whole block: ``out = h + mlp(ln_2(h)) + adapter(ln_1(x))`` with ``h = x + attn(ln_1(x))``.
* Both towers also take ``weight_deltas``: ``weight_deltas[i]``, when not ``None``, maps projection names
  (``q``, ``k``, ``v``, ``o``) to :class:`~mmprompt.clip.transformer.WeightDelta` updates of block ``i``'s
  attention weights (e.g. low-rank ones), applied to the projection's input alongside the frozen weight:
  ``y = x W^T + b + delta(x)``. :func:`merge_weight_deltas` adds them into the weights for deployment.
  The image tower also takes ``input_adapter``: a residual branch on the tokens that enter the first
  block, after ``ln_pre``: ``z = ln_pre(x)``, then ``z + input_adapter(z)``.

Parameter names follow OpenAI's release, so an OpenAI state dict loads strictly; what other families add
has names in the same style (``visual.conv1.bias``, ``visual.attn_pool.*``, ``text_projection_bias``,
``logit_bias``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CLIPConfig
from .deltas import PROJECTIONS, AttentionDeltas, BlockWeightDeltas, WeightDelta, merge_weight_deltas
from .transformer import (
    Adapter,
    Attention,
    BlockAdapters,
    DeepPrompts,
    LayerNorm,
    PackedLayout,
    QuickGELU,
    ResidualAttentionBlock,
    Transformer,
    attention,
    frozen_cast,
    make_mlp,
    replace_packed,
    replace_tokens,
)

__all__ = [
    "CLIP",
    "PROJECTIONS",
    "Adapter",
    "Attention",
    "AttentionDeltas",
    "BlockAdapters",
    "BlockWeightDeltas",
    "AttentionPool",
    "DeepPrompts",
    "LayerNorm",
    "PackedLayout",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "WeightDelta",
    "attention",
    "build_model",
    "frozen_cast",
    "merge_weight_deltas",
    "replace_packed",
    "replace_tokens",
]

logger = logging.getLogger(__name__)


class AttentionPool(nn.Module):
    """Multi-head attention pooling (SigLIP's MAP head): one learned query attends over the tokens, then a
    residual MLP on its LayerNorm: ``h = attn(probe, x); h + mlp(ln(h))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str, eps: float) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = Attention(width, heads)
        self.ln = LayerNorm(width, eps=eps)
        self.mlp = make_mlp(width, mlp_ratio, activation)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features [B, D] of tokens ``x`` [B, L, D]."""
        b, _, d = x.shape
        probe = self.probe.to(x.dtype).expand(b, 1, d)
        q = self.attn.heads_of(self.attn.in_projection(probe, slice(0, d)))[0]  # [B, H, 1, Dh]
        k, v = self.attn.key_values(x)  # 2 x [B, H, L, Dh]
        h = attention(q, k, v).transpose(1, 2).reshape(b, 1, d)
        h = self.attn.project(h)[:, 0]  # [B, D]
        return h + self.mlp(self.ln(h))


class VisionTransformer(nn.Module):
    """The ViT image tower: patches (+ class token) + positions, blocks, pooling, projection."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        v = config.vision
        self.config = v
        act = config.vision_activation
        scale = v.width**-0.5
        self.conv1 = nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=v.patch_bias)
        if v.class_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(v.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(v.num_positions, v.width))
        self.ln_pre = LayerNorm(v.width, eps=v.ln_eps) if v.ln_pre else None
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_ratio, act, v.ln_eps)
        self.ln_post = LayerNorm(v.width, eps=v.ln_eps)
        if v.pool == "map":
            self.attn_pool = AttentionPool(v.width, v.heads, v.mlp_ratio, act, v.ln_eps)
        if v.projection:
            self.proj = nn.Parameter(scale * torch.randn(v.width, config.embed_dim))

    def embed_patches(self, images: Tensor) -> Tensor:
        """The image's own tokens [B, (1 +) g*g, Dv] before ``ln_pre``: patch embeddings, the class token
        (when the tower has one) first, plus the positional embedding."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [B, Dv, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, Dv]
        if self.config.class_token:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)  # [B, 1+g*g, Dv]
        return x + self.positional_embedding.to(x.dtype)

    def forward(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: DeepPrompts | None = None,
        adapters: BlockAdapters | None = None,
        weight_deltas: BlockWeightDeltas | None = None,
        input_adapter: Adapter | None = None,
    ) -> Tensor:
        """Image features [B, E] (not normalised) of ``images`` [B, 3, H, W].

        ``prompts`` ([n, Dv] or [B, n, Dv]) are appended after the patch tokens; ``deep_prompts[i]``
        replaces the last ``n`` tokens before block ``i`` (index 0 is ignored: block 0 sees ``prompts``).
        ``adapters`` and ``weight_deltas``: per block, as in the module docstring.
        ``input_adapter``: a token-wise residual branch on the first block's input, after ``ln_pre``
        (on the embedded tokens in towers without ``ln_pre``): ``z + input_adapter(z)``.
        """
        v = self.config
        x = self.embed_patches(images)
        n_image = x.shape[1]
        n_prompts = 0
        if prompts is not None:
            p = prompts.to(x.dtype)
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p
            n_prompts = p.shape[1]
            x = torch.cat([x, p], dim=1)  # [B, n_image + n, Dv]
        if deep_prompts is not None and any(p is not None for p in deep_prompts):
            if n_prompts == 0:
                raise ValueError("deep vision prompts need input prompts (their positions are the last tokens)")
            deep_prompts = [None, *deep_prompts[1:]]
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        if input_adapter is not None:
            x = x + input_adapter(x)
        rows = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if v.pool == "tok" else None
        x = self.transformer(x, deep_prompts=deep_prompts, prompt_start=-max(n_prompts, 1), output_rows=rows,
                             adapters=adapters, weight_deltas=weight_deltas)
        if v.pool == "tok":
            pooled = self.ln_post(x[:, 0])  # the class token
        elif v.pool == "avg":
            patches = x[:, int(v.class_token) : n_image]
            pooled = self.ln_post(patches.mean(1)) if v.final_ln_after_pool else self.ln_post(patches).mean(1)
        else:
            pooled = self.attn_pool(self.ln_post(x[:, :n_image]))
        return pooled @ self.proj.to(x.dtype) if v.projection else pooled


class CLIP(nn.Module):
    """A CLIP (or SigLIP). ``visual`` is the image tower; the text tower's parts sit at the top."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        t = config.text
        self.visual = VisionTransformer(config)
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, config.text_activation, t.ln_eps)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width, eps=t.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        if t.proj_bias:
            self.text_projection_bias = nn.Parameter(torch.zeros(config.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        if config.logit_bias:
            self.logit_bias = nn.Parameter(torch.zeros([]))
        self.tokenizer: Any = None
        """The tokenizer that came with the weights (None: CLIP's BPE, see :meth:`get_tokenizer`)."""
        self.weights_info: Any = None
        """How :func:`mmprompt.clip.load` read the weights (:class:`~mmprompt.clip.loading.WeightsInfo`)."""
        self.init_weights()

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def prompt_start(self) -> int:
        """Where learned text prompts go: right after the start token (CLIP's SOT), or at 0 without one."""
        return self.config.text.prompt_start

    @property
    def text_fast_paths_exact(self) -> bool:
        """Whether computing each text only up to its pooled token, and a prefix shared by all texts once,
        gives the same features: true under a causal mask (no position depends on later ones)."""
        return self.config.text.causal

    def get_tokenizer(self) -> Any:
        """The tokenizer of these weights: the one loaded with them, else CLIP's BPE for CLIP-vocabulary towers."""
        if self.tokenizer is not None:
            return self.tokenizer
        t = self.config.text
        clip_eot = t.pool == "argmax" or (t.pool == "eos" and t.eos_id == 49407)
        if t.vocab_size == 49408 and clip_eot and t.start_token:
            from .tokenizer import get_tokenizer

            return get_tokenizer()
        raise ValueError(
            f"this CLIP's text tower (vocabulary {t.vocab_size}, pooling {t.pool}) does not use CLIP's BPE "
            "tokenizer and none was loaded with it (a Hugging Face folder brings its tokenizer.json)"
        )

    def init_weights(self) -> None:
        """OpenAI's initialisation, for models trained from scratch."""
        t = self.config.text
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tower in (self.transformer, self.visual.transformer):
            proj_std = (tower.width**-0.5) * ((2 * tower.layers) ** -0.5)
            attn_std = tower.width**-0.5
            fc_std = (2 * tower.width) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.zeros_(block.mlp.c_fc.bias)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
                nn.init.zeros_(block.mlp.c_proj.bias)
        nn.init.normal_(self.text_projection, std=t.width**-0.5)

    def encode_image(self, images: Tensor, **insertions: Any) -> Tensor:
        """Image features [B, E], not normalised; ``insertions`` (``prompts``, ``deep_prompts``, ``adapters``,
        ``weight_deltas``, ``input_adapter``) as in :meth:`VisionTransformer.forward`."""
        return self.visual(images, **insertions)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings [N, L, Dt] of token ids [N, L]."""
        return self.token_embedding(tokens).to(self.dtype)

    def text_pool_index(self, tokens: Tensor) -> Tensor:
        """The position [N] each text's feature is read at, from its token ids [N, L]."""
        t = self.config.text
        n, length = tokens.shape
        if t.pool == "argmax":
            return tokens.argmax(dim=-1)
        if t.pool == "eos":
            return (tokens == t.eos_id).int().argmax(dim=-1)
        position = length - 1 if t.pool == "last" else 0
        return torch.full((n,), position, dtype=torch.long, device=tokens.device)

    def encode_text(self, tokens: Tensor, truncate: bool = True) -> Tensor:
        """Text features [N, E] of token ids [N, L], not normalised."""
        return self.encode_text_embeddings(
            self.embed_tokens(tokens), self.text_pool_index(tokens), truncate=truncate
        )

    def encode_text_embeddings(
        self,
        x: Tensor,
        eot: Tensor,
        deep_prompts: DeepPrompts | None = None,
        prompt_start: int | None = None,
        truncate: bool = True,
        shared_prefix: int = 0,
        prefix_groups: int = 1,
        adapters: BlockAdapters | None = None,
        weight_deltas: BlockWeightDeltas | None = None,
        layout: PackedLayout | None = None,
    ) -> Tensor:
        """Text features [N, E] from token embeddings ``x`` [N, L, Dt] and pooled positions ``eot`` [N].

        ``prompt_start`` (default :attr:`prompt_start`) is where ``deep_prompts`` go. With ``truncate``
        only the positions up to each pooled token are computed, packed without padding
        (:meth:`Transformer.forward_last`): under the causal mask no position depends on later ones, so
        the features are the same as with the full context (``truncate=False``, the official
        computation). ``shared_prefix`` (with ``truncate``): the number of leading positions the caller
        guarantees equal in every prompt (in every one of ``prefix_groups`` consecutive groups of
        prompts), computed once (per group). Both apply only where they are exact
        (:attr:`text_fast_paths_exact`); a bidirectional tower always computes the full sequence.
        ``layout`` (with ``truncate``): the packed layout of ``eot + 1 - shared_prefix``, made beforehand
        from host lengths (:meth:`PackedLayout.from_lengths`), so that nothing is read back from the device.
        """
        if prompt_start is None:
            prompt_start = self.prompt_start
        eot = eot.to(x.device)
        if not self.text_fast_paths_exact:
            truncate, shared_prefix = False, 0
        elif truncate:
            x = x[:, : (int(eot.max()) + 1 if layout is None else layout.offset + layout.longest)]
        elif shared_prefix:
            raise ValueError("shared_prefix needs truncate=True (the full context is the reference computation)")
        x = x.to(self.dtype) + self.positional_embedding[: x.shape[1]].to(self.dtype)
        if truncate:
            x = self.transformer.forward_last(
                x,
                eot + 1,
                deep_prompts=deep_prompts,
                prompt_start=prompt_start,
                shared_prefix=shared_prefix,
                prefix_groups=prefix_groups,
                adapters=adapters,
                weight_deltas=weight_deltas,
                layout=layout,
            )  # [N, Dt]
        else:
            x = self.transformer(
                x,
                causal=self.config.text.causal,
                deep_prompts=deep_prompts,
                prompt_start=prompt_start,
                output_rows=eot,
                adapters=adapters,
                weight_deltas=weight_deltas,
            )[:, 0]
        x = self.ln_final(x) @ self.text_projection.to(x.dtype)  # the pooled token [N, E]
        if self.config.text.proj_bias:
            x = x + self.text_projection_bias.to(x.dtype)
        return x

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Scaled cosine logits [B, N] (plus ``logit_bias`` when the model has one)."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        out = self.logit_scale.exp().float() * img @ txt.t()
        if self.config.logit_bias:
            out = out + self.logit_bias.float()
        return out

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Zero-shot logits [B, N] of images against texts (with ``logit_bias`` if any: sigmoid them for
        SigLIP's per-pair probabilities; a softmax over texts is unchanged by the bias)."""
        return self.logits(self.encode_image(images), self.encode_text(tokens))


def build_model(config: CLIPConfig) -> CLIP:
    """A randomly initialised CLIP of the given architecture."""
    return CLIP(config)
