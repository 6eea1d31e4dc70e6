"""The transformer blocks both CLIP towers share: attention, pre-LN residual blocks, the packed causal path.

Everything here is shape- and method-agnostic; widths, heads, activations and LayerNorm epsilons come
from the caller (see :mod:`mmprompt.clip.model`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deltas import AttentionDeltas, BlockWeightDeltas
from .packing import PackedLayout, replace_packed

DeepPrompts = Sequence[Tensor | None]
Adapter = Callable[[Tensor], Tensor]
BlockAdapters = Sequence[Adapter | None]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input and parameter dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: tuple[str, ...] = ("quick_gelu", "gelu", "gelu_tanh")
"""MLP activations: OpenAI's QuickGELU, exact (erf) GELU, and GELU's tanh approximation."""


def make_activation(name: str) -> nn.Module:
    """The MLP activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def make_mlp(width: int, mlp_ratio: float, activation: str) -> nn.Sequential:
    """The transformer MLP with OpenAI's names: ``c_fc`` (width -> hidden), ``gelu``, ``c_proj`` (hidden -> width)."""
    hidden = int(round(width * mlp_ratio))
    return nn.Sequential(
        OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", make_activation(activation)),
                     ("c_proj", nn.Linear(hidden, width))])
    )


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matrix products in on this device type now, or None when it is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: no per-device-type queries
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None


def frozen_cast(module: nn.Module, name: str) -> Tensor:
    """``module.<name>`` as autocast would cast it for a matrix product, kept across calls when frozen.

    Autocast casts a frozen fp32 weight to bf16 / fp16 again in every forward pass (its own cache
    holds only tensors that require gradients); for a frozen CLIP that is the whole model, every
    step. The cast here is the same one, made once while the weight stays unchanged (same storage,
    same version); outside autocast, or for a weight that trains, the tensor itself is returned.
    """
    t: Tensor = getattr(module, name)
    dtype = _autocast_dtype(t.device.type)
    if dtype is None or t.requires_grad or t.dtype == dtype:
        return t
    casts: dict[str, tuple[tuple[object, ...], Tensor]] = module.__dict__.setdefault("_frozen_casts", {})
    stamp = (t.data_ptr(), t._version, t.device, dtype)
    hit = casts.get(name)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():  # a cast made in inference mode must serve training
        cast = t.detach().to(dtype)
    casts[name] = (stamp, cast)
    return cast


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Scaled dot-product attention of ``q`` [..., Lq, Dh] over ``k`` / ``v`` [..., Lk, Dh]; ``mask``
    (bool, True = attend) or ``causal`` (query ``i`` attends keys ``<= i``).

    PyTorch's SDPA, except when training in bf16 / fp16 on CPU: there its kernels are slower than
    fp32 (the flash backward, and the math kernel, which computes in fp32), so the attention is
    computed as autocast computes an explicit one: products in the low precision, the softmax in
    fp32 (as the official code's ``nn.MultiheadAttention`` under autocast).
    """
    low = q.dtype in (torch.bfloat16, torch.float16)
    if not (low and q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [..., Lq, Lk]
    if causal and mask is None:
        lq, lk = scores.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()  # as SDPA's is_causal
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head self-attention with OpenAI's parameter names, computed by SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def heads_of(self, t: Tensor) -> Tensor:
        """[B, L, parts * D] -> [parts, B, H, L, Dh] (e.g. q, k, v from the input projection)."""
        b, n, width = t.shape
        d = self.out_proj.in_features
        return t.view(b, n, width // d, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def in_projection(self, x: Tensor, part: slice = slice(None), deltas: AttentionDeltas | None = None) -> Tensor:
        """``x @ in_proj[part].T + bias[part]`` (rows ``0:D`` queries, ``D:2D`` keys, ``2D:3D`` values), plus
        the ``q`` / ``k`` / ``v`` entries of ``deltas`` on the rows they own."""
        out = F.linear(x, frozen_cast(self, "in_proj_weight")[part], frozen_cast(self, "in_proj_bias")[part])
        if not deltas:
            return out
        d = self.out_proj.in_features
        first = (part.start or 0) // d
        last = 3 if part.stop is None else part.stop // d
        for j, name in enumerate(("q", "k", "v")[first:last]):
            delta = deltas.get(name)
            if delta is not None:  # in place on the fresh product (its backward does not need it)
                out[..., j * d : (j + 1) * d] += delta(x).to(out.dtype)
        return out

    def key_values(self, x: Tensor, deltas: AttentionDeltas | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, L, Dh] of ``x`` [B, L, D]."""
        k, v = self.heads_of(self.in_projection(x, slice(x.shape[-1], None), deltas))
        return k, v

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        rows: Tensor | None = None,
        return_kv: bool = False,
        deltas: AttentionDeltas | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Self-attention of ``x`` [B, L, D] -> [B, L, D].

        With ``rows`` [B] only one query position per sequence is computed (its keys and values are
        all positions, or those up to it when ``causal``): output [B, 1, D]. With ``return_kv`` the
        keys and values [B, H, L, Dh] come back too. ``deltas``: updates of the projections
        (:data:`AttentionDeltas`).
        """
        b, n, d = x.shape  # [B, L, D]
        if rows is None:
            q, k, v = self.heads_of(self.in_projection(x, deltas=deltas))  # 3 x [B, H, L, Dh]
        else:
            x_rows = x[torch.arange(b, device=x.device), rows].unsqueeze(1)  # [B, 1, D]
            q = self.heads_of(self.in_projection(x_rows, slice(0, d), deltas))[0]  # [B, H, 1, Dh]
            k, v = self.key_values(x, deltas)  # 2 x [B, H, L, Dh]
            query_pos = rows.view(b, 1, 1, 1)
        mask = None
        if causal and rows is not None:
            mask = torch.arange(n, device=x.device) <= query_pos  # key <= query: [B, 1, 1, L]
        out = attention(q, k, v, mask=mask, causal=causal)  # [B, H, L | 1, Dh]
        out = self.project(out.transpose(1, 2).reshape(b, out.shape[2], d), deltas)  # [B, L | 1, D]
        return (out, (k, v)) if return_kv else out

    def forward_packed(
        self,
        x: Tensor,
        layout: PackedLayout,
        past: tuple[Tensor, Tensor] | None = None,
        rows: Tensor | None = None,
        deltas: AttentionDeltas | None = None,
    ) -> Tensor:
        """Causal self-attention of packed tokens ``x`` [T, D] -> [T, D] (or, with ``rows`` [B] packed
        rows, only those queries: [B, D]). ``past``: keys and values [G, H, P, Dh] of the shared
        positions before every sequence (``layout.offset`` = P), one set per group of ``B / G``
        consecutive sequences. ``deltas``: updates of the projections (:data:`AttentionDeltas`)."""
        d = x.shape[-1]
        b = layout.num_sequences
        if rows is None:
            q, k, v = self.heads_of(layout.pad(self.in_projection(x, deltas=deltas)))  # 3 x [B, H, S, Dh]
        else:
            k, v = self.heads_of(layout.pad(self.in_projection(x, slice(d, None), deltas)))  # 2 x [B, H, S, Dh]
            q = self.heads_of(self.in_projection(x.index_select(0, rows), slice(0, d), deltas).unsqueeze(1))[0]
        offset = 0
        if past is not None:
            offset = past[0].shape[2]
            k = torch.cat([_per_sequence(past[0], b), k], dim=2)  # [B, H, P + S, Dh]
            v = torch.cat([_per_sequence(past[1], b), v], dim=2)
        mask = layout.attention_mask(offset, last_only=rows is not None)  # key <= query
        out = attention(q, k, v, mask=mask)  # [B, H, S | 1, Dh]
        out = out.transpose(1, 2).reshape(b, -1, d)  # [B, S | 1, D]
        out = layout.unpad(out) if rows is None else out.squeeze(1)
        return self.project(out, deltas)

    def project(self, x: Tensor, deltas: AttentionDeltas | None = None) -> Tensor:
        """The output projection (``out_proj``), plus the ``o`` entry of ``deltas``."""
        out = F.linear(x, frozen_cast(self.out_proj, "weight"), frozen_cast(self.out_proj, "bias"))
        delta = deltas.get("o") if deltas else None
        return out if delta is None else out + delta(x).to(out.dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = make_mlp(width, mlp_ratio, activation)

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        rows: Tensor | None = None,
        return_kv: bool = False,
        adapter: Adapter | None = None,
        deltas: AttentionDeltas | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """The block on ``x`` [B, L, D]; with ``rows`` [B], only those positions' outputs [B, 1, D].
        With ``return_kv``, also the attention's keys and values of ``x`` (:meth:`Attention.forward`).
        ``adapter``: a residual branch on ``ln_1(x)`` added to the output (see :mod:`mmprompt.clip.model`);
        ``deltas``: updates of the attention's projections (:data:`AttentionDeltas`)."""
        normed = self.ln_1(x)
        h = self.attn(normed, causal=causal, rows=rows, return_kv=return_kv, deltas=deltas)
        kv = None
        if return_kv:
            h, kv = h
        if rows is not None:
            index = torch.arange(x.shape[0], device=x.device)
            x = x[index, rows].unsqueeze(1)
            normed = normed[index, rows].unsqueeze(1)
        x = x + h
        x = x + self.feed_forward(self.ln_2(x))
        if adapter is not None:
            x = x + adapter(normed)
        return (x, kv) if return_kv else x

    def feed_forward(self, x: Tensor) -> Tensor:
        """``mlp`` (c_fc, activation, c_proj), with frozen weights cast once under autocast."""
        fc, proj = self.mlp.c_fc, self.mlp.c_proj
        x = F.linear(x, frozen_cast(fc, "weight"), frozen_cast(fc, "bias"))
        return F.linear(self.mlp.gelu(x), frozen_cast(proj, "weight"), frozen_cast(proj, "bias"))

    def key_values(self, x: Tensor, deltas: AttentionDeltas | None = None) -> tuple[Tensor, Tensor]:
        """The attention's keys and values [B, H, L, Dh] for the block input ``x``."""
        return self.attn.key_values(self.ln_1(x), deltas)

    def forward_packed(
        self,
        x: Tensor,
        layout: PackedLayout,
        past: tuple[Tensor, Tensor] | None = None,
        last_only: bool = False,
        adapter: Adapter | None = None,
        deltas: AttentionDeltas | None = None,
    ) -> Tensor:
        """The block on packed causal tokens ``x`` [T, D] (see :class:`PackedLayout`) -> [T, D], or
        with ``last_only`` only each sequence's last token: [B, D]. ``past``: keys and values of the
        shared positions before every sequence."""
        rows = layout.last if last_only else None
        normed = self.ln_1(x)
        h = self.attn.forward_packed(normed, layout, past=past, rows=rows, deltas=deltas)
        if rows is not None:
            x, normed = x.index_select(0, rows), normed.index_select(0, rows)
        x = x + h
        x = x + self.feed_forward(self.ln_2(x))
        return x if adapter is None else x + adapter(normed)


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
    """A stack of :class:`ResidualAttentionBlock` (``resblocks``)."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, activation, eps) for _ in range(layers)]
        )

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        deep_prompts: DeepPrompts | None = None,
        prompt_start: int = 1,
        output_rows: Tensor | None = None,
        adapters: BlockAdapters | None = None,
        weight_deltas: BlockWeightDeltas | None = None,
    ) -> Tensor:
        """Run the blocks on ``x`` [B, L, D] -> [B, L, D].

        ``deep_prompts[i]`` (block ``i``), when given and not ``None``, replaces the prompt positions
        starting at ``prompt_start`` (negative: counted from the end) before that block runs. With
        ``output_rows`` [B], the last block computes only that position of each sequence: [B, 1, D]
        (the same numbers, without the work for outputs nobody reads). ``weight_deltas[i]``: updates of
        block ``i``'s attention projections (:data:`BlockWeightDeltas`).
        """
        if deep_prompts is not None and len(deep_prompts) > self.layers:
            raise ValueError(f"{len(deep_prompts)} deep prompts for a transformer of {self.layers} layers")
        adapter_of = self._adapters(adapters)
        deltas_of = self._adapters(weight_deltas, "sets of weight deltas")
        for i, block in enumerate(self.resblocks):
            if deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
                x = replace_tokens(x, deep_prompts[i], prompt_start)
            last = output_rows if i == self.layers - 1 else None
            x = block(x, causal=causal, rows=last, adapter=adapter_of[i], deltas=deltas_of[i])
        return x

    def _adapters(self, adapters: Sequence[Any] | None, what: str = "block adapters") -> list[Any]:
        """One slot per block (None where there is nothing)."""
        if adapters is None:
            return [None] * self.layers
        if len(adapters) > self.layers:
            raise ValueError(f"{len(adapters)} {what} for a transformer of {self.layers} layers")
        return [*adapters, *([None] * (self.layers - len(adapters)))]

    def forward_last(
        self,
        x: Tensor,
        lengths: Tensor,
        deep_prompts: DeepPrompts | None = None,
        prompt_start: int = 1,
        shared_prefix: int = 0,
        prefix_groups: int = 1,
        adapters: BlockAdapters | None = None,
        weight_deltas: BlockWeightDeltas | None = None,
        layout: PackedLayout | None = None,
    ) -> Tensor:
        """Causal: the output [B, D] at position ``lengths[b] - 1`` of each sequence of ``x`` [B, L, D].

        The same numbers as ``forward(x, causal=True, output_rows=lengths - 1)``, computed with less
        work. Positions at or after a sequence's length are never computed (nothing before them reads
        them), and the others are packed without padding for the position-wise layers (projections,
        MLP, LayerNorm); only the attention sees them padded to the longest sequence.

        ``shared_prefix`` = ``P`` promises that the first ``P`` positions are the same in every
        sequence: under the causal mask their states are then the same in every sequence at every
        block, so they are computed once (from sequence 0) and the other positions attend to their
        keys and values. ``P`` must be below every length, and a deep prompt must lie either inside
        the prefix (then it is one set, [n, D] or [1, n, D]) or after it. With ``prefix_groups`` =
        ``G``, the sequences are ``G`` consecutive groups of ``B / G`` (e.g. the class prompts of
        ``G`` images in CoCoOp), the prefix shared within each group: computed once per group.

        ``layout``: :meth:`PackedLayout.from_lengths` of ``lengths - shared_prefix`` with offset
        ``shared_prefix``, made beforehand (and kept across calls): then nothing is read back from the
        device and the index tensors and masks are not made again (``lengths`` is not read).
        """
        n_seq, length, _ = x.shape
        deep = list(deep_prompts) if deep_prompts is not None else []
        if len(deep) > self.layers:
            raise ValueError(f"{len(deep)} deep prompts for a transformer of {self.layers} layers")
        if prefix_groups < 1 or n_seq % prefix_groups:
            raise ValueError(f"{n_seq} sequences do not form {prefix_groups} groups of equal size")
        p = int(shared_prefix)
        if layout is None:
            lengths = lengths.to(x.device)
            low, high = int(lengths.min()), int(lengths.max())
        elif layout.host_lengths is None or layout.offset != p or layout.num_sequences != n_seq:
            raise ValueError(f"the given layout (offset {layout.offset}, {layout.num_sequences} sequences, host "
                             f"lengths {'unknown' if layout.host_lengths is None else 'known'}) does not fit "
                             f"{n_seq} sequences with shared prefix {p}")
        else:
            low, high = p + min(layout.host_lengths), p + max(layout.host_lengths)
        if high > length or not 0 <= p < low:
            raise ValueError(
                f"lengths {low}..{high} and shared prefix {p} do not fit "
                f"sequences of {length} positions (need shared prefix < every length <= {length})"
            )
        if layout is None:
            layout = PackedLayout.build(lengths - p, p)
        tokens = x.reshape(n_seq * length, -1).index_select(0, layout.gather_index(length))  # [T, D]
        prefix = x[:: n_seq // prefix_groups, :p] if p else None  # [G, P, D]
        adapter_of = self._adapters(adapters)
        deltas_of = self._adapters(weight_deltas, "sets of weight deltas")
        for i, block in enumerate(self.resblocks):
            prompts = deep[i] if i < len(deep) else None
            if prompts is not None:
                n = prompts.shape[-2]
                if prompt_start < 0:
                    raise ValueError("deep prompts of causal sequences need a prompt_start >= 0")
                if prefix is not None and prompt_start + n <= p:
                    if prompts.dim() == 3 and prompts.shape[0] != 1:
                        raise ValueError(f"deep prompts {tuple(prompts.shape)} differ per sequence inside the "
                                         f"shared prefix of {p} positions")
                    prefix = replace_tokens(prefix, prompts, prompt_start)
                elif prompt_start >= p:
                    tokens = replace_packed(tokens, prompts, prompt_start, layout.absolute_positions(),
                                            layout.sequence, layout.prompt_slots(prompt_start, n))
                else:
                    raise ValueError(f"deep prompts at positions {prompt_start}..{prompt_start + n} straddle "
                                     f"the shared prefix of {p} positions")
            last = i == self.layers - 1
            kv = None
            if prefix is not None:
                if last:
                    kv = block.key_values(prefix, deltas_of[i])  # the prefix's own outputs are not read
                else:
                    prefix, kv = block(prefix, causal=True, return_kv=True, adapter=adapter_of[i],
                                       deltas=deltas_of[i])
            tokens = block.forward_packed(tokens, layout, past=kv, last_only=last, adapter=adapter_of[i],
                                          deltas=deltas_of[i])
        return tokens


def _per_sequence(t: Tensor, n: int) -> Tensor:
    """``t`` [G, ...] repeated for ``n`` sequences in ``G`` consecutive groups: [n, ...]."""
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    return t.repeat_interleave(n // t.shape[0], dim=0)
