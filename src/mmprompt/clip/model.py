"""One CLIP implementation (OpenAI architecture), batch-first, for every size.

The encoders accept prompt tokens at explicit insertion points and know nothing about the methods
that make them:

* ``VisionTransformer.forward(images, prompts=..., deep_prompts=...)``: ``prompts`` are appended after
  the patch tokens (after the positional embedding, before ``ln_pre``); ``deep_prompts[i]``, when not
  ``None``, replaces the last ``n`` tokens of the sequence before block ``i`` runs.
* ``CLIP.encode_text_embeddings(x, eot, deep_prompts=..., prompt_start=1)``: the caller gives the token
  embeddings (with any learned context already in place); ``deep_prompts[i]`` replaces positions
  ``prompt_start .. prompt_start + n`` before block ``i``.

Parameter names follow OpenAI's release, so an OpenAI state dict loads strictly.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CLIPConfig

DeepPrompts = Sequence[Tensor | None]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input and parameter dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _attention_kernel(q: Tensor, causal: bool) -> AbstractContextManager[object]:
    """The SDPA kernel choice: PyTorch's default, except for causal (text) attention in bf16 / fp16 on
    CPU with gradients, where the flash kernel's backward is several times slower than the math one
    on short sequences (torch 2.x); the math kernel computes the same attention."""
    if causal and q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.requires_grad:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3
        except ImportError:
            return nullcontext()
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


class Attention(nn.Module):
    """Multi-head self-attention with OpenAI's parameter names, computed by SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, causal: bool = False, rows: Tensor | None = None) -> Tensor:
        """Self-attention of ``x`` [B, L, D] -> [B, L, D].

        With ``rows`` [B] only one query position per sequence is computed (its keys and values are
        all positions, or those up to it when ``causal``): output [B, 1, D].
        """
        b, n, d = x.shape  # [B, L, D]
        h, dh = self.heads, d // self.heads
        if rows is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3D]
            q, k, v = qkv.view(b, n, 3, h, dh).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, Dh]
            with _attention_kernel(q, causal):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, L, Dh]
            return self.out_proj(out.transpose(1, 2).reshape(b, n, d))
        x_rows = x[torch.arange(b, device=x.device), rows].unsqueeze(1)  # [B, 1, D]
        q = F.linear(x_rows, self.in_proj_weight[:d], self.in_proj_bias[:d]).view(b, 1, h, dh).transpose(1, 2)
        kv = F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])  # [B, L, 2D]
        k, v = kv.view(b, n, 2, h, dh).permute(2, 0, 3, 1, 4)  # 2 x [B, H, L, Dh]
        mask = None
        if causal:
            mask = (torch.arange(n, device=x.device) <= rows.unsqueeze(1)).view(b, 1, 1, n)
        with _attention_kernel(q, causal):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, 1, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(b, 1, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        act: nn.Module = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: Tensor, causal: bool = False, rows: Tensor | None = None) -> Tensor:
        """The block on ``x`` [B, L, D]; with ``rows`` [B], only those positions' outputs [B, 1, D]."""
        if rows is None:
            x = x + self.attn(self.ln_1(x), causal=causal)
        else:
            x = x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1) + self.attn(
                self.ln_1(x), causal=causal, rows=rows
            )
        return x + self.mlp(self.ln_2(x))


def replace_tokens(x: Tensor, prompts: Tensor, start: int) -> Tensor:
    """``x`` with positions ``start .. start + n`` replaced by ``prompts`` ([n, D] or [B, n, D]).

    A negative ``start`` counts from the end (``-n`` replaces the last ``n`` tokens).
    """
    n = prompts.shape[-2]
    if start < 0:
        start = x.shape[1] + start
    prompts = prompts.to(x.dtype)
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0)
    prompts = prompts.expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], prompts, x[:, start + n :]], dim=1)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, activation) for _ in range(layers)]
        )

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        deep_prompts: DeepPrompts | None = None,
        prompt_start: int = 1,
        output_rows: Tensor | None = None,
    ) -> Tensor:
        """Run the blocks on ``x`` [B, L, D] -> [B, L, D].

        ``deep_prompts[i]`` (block ``i``), when given and not ``None``, replaces the prompt positions
        starting at ``prompt_start`` (negative: counted from the end) before that block runs. With
        ``output_rows`` [B], the last block computes only that position of each sequence: [B, 1, D]
        (the same numbers, without the work for outputs nobody reads).
        """
        if deep_prompts is not None and len(deep_prompts) > self.layers:
            raise ValueError(f"{len(deep_prompts)} deep prompts for a transformer of {self.layers} layers")
        for i, block in enumerate(self.resblocks):
            if deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
                x = replace_tokens(x, deep_prompts[i], prompt_start)
            last = output_rows if i == self.layers - 1 else None
            x = block(x, causal=causal, rows=last)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        v = config.vision
        self.config = v
        scale = v.width**-0.5
        self.conv1 = nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(v.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(v.num_positions, v.width))
        self.ln_pre = LayerNorm(v.width)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_ratio, config.activation)
        self.ln_post = LayerNorm(v.width)
        self.proj = nn.Parameter(scale * torch.randn(v.width, config.embed_dim))

    def forward(
        self, images: Tensor, prompts: Tensor | None = None, deep_prompts: DeepPrompts | None = None
    ) -> Tensor:
        """Image features [B, E] (not normalised) of ``images`` [B, 3, H, W].

        ``prompts`` ([n, Dv] or [B, n, Dv]) are appended after the patch tokens; ``deep_prompts[i]``
        replaces the last ``n`` tokens before block ``i`` (index 0 is ignored: block 0 sees ``prompts``).
        """
        dtype = self.conv1.weight.dtype
        x = self.conv1(images.to(dtype))  # [B, Dv, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, Dv]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, 1+g*g, Dv]
        n_prompts = 0
        if prompts is not None:
            p = prompts.to(x.dtype)
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p
            n_prompts = p.shape[1]
            x = torch.cat([x, p], dim=1)  # [B, 1+g*g+n, Dv]
        if deep_prompts is not None and any(p is not None for p in deep_prompts):
            if n_prompts == 0:
                raise ValueError("deep vision prompts need input prompts (their positions are the last tokens)")
            deep_prompts = [None, *deep_prompts[1:]]
        x = self.ln_pre(x)
        cls_rows = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = self.transformer(
            x, deep_prompts=deep_prompts, prompt_start=-max(n_prompts, 1), output_rows=cls_rows
        )
        return self.ln_post(x[:, 0]) @ self.proj.to(x.dtype)  # the class token


class CLIP(nn.Module):
    """OpenAI-architecture CLIP. ``visual`` is the image tower; the text tower's parts sit at the top."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        t = config.text
        self.visual = VisionTransformer(config)
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, config.activation)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.init_weights()

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

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

    def encode_image(
        self, images: Tensor, prompts: Tensor | None = None, deep_prompts: DeepPrompts | None = None
    ) -> Tensor:
        """Image features [B, E], not normalised."""
        return self.visual(images, prompts=prompts, deep_prompts=deep_prompts)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings [N, L, Dt] of token ids [N, L]."""
        return self.token_embedding(tokens).to(self.dtype)

    def encode_text(self, tokens: Tensor, truncate: bool = True) -> Tensor:
        """Text features [N, E] of token ids [N, L] (EOT = the largest id), not normalised."""
        return self.encode_text_embeddings(self.embed_tokens(tokens), tokens.argmax(dim=-1), truncate=truncate)

    def encode_text_embeddings(
        self,
        x: Tensor,
        eot: Tensor,
        deep_prompts: DeepPrompts | None = None,
        prompt_start: int = 1,
        truncate: bool = True,
    ) -> Tensor:
        """Text features [N, E] from token embeddings ``x`` [N, L, Dt] and EOT positions ``eot`` [N].

        With ``truncate`` the sequence is cut after the last EOT among the prompts: under the causal
        mask no position depends on later ones, so the features are the same as with the full context.
        """
        if truncate:
            length = int(eot.max()) + 1
            x = x[:, :length]
        x = x.to(self.dtype) + self.positional_embedding[: x.shape[1]].to(self.dtype)
        eot = eot.to(x.device)
        x = self.transformer(
            x, causal=True, deep_prompts=deep_prompts, prompt_start=prompt_start, output_rows=eot
        )
        return self.ln_final(x[:, 0]) @ self.text_projection.to(x.dtype)  # the EOT token [N, E]

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Zero-shot logits [B, N] of images against texts."""
        img = F.normalize(self.encode_image(images).float(), dim=-1)
        txt = F.normalize(self.encode_text(tokens).float(), dim=-1)
        return self.logit_scale.exp().float() * img @ txt.t()


def build_model(config: CLIPConfig) -> CLIP:
    """A randomly initialised CLIP of the given architecture."""
    return CLIP(config)
