"""Weight-space insertion point of the CLIP: learned updates of the attention projections' weights.

A :class:`WeightDelta` is applied beside a frozen projection (``y = x W^T + b + delta(x)``) by the blocks of
:mod:`mmprompt.clip.transformer` (``weight_deltas`` of both towers, one :data:`AttentionDeltas` per block);
:func:`merge_weight_deltas` adds ``delta_weight()`` into the weights, so that the plain blocks compute the same
at no extra cost. Nothing here knows which method made the updates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .transformer import Transformer

__all__ = ["PROJECTIONS", "AttentionDeltas", "BlockWeightDeltas", "WeightDelta", "merge_weight_deltas"]


@runtime_checkable
class WeightDelta(Protocol):
    """A learned additive update of one attention projection ``y = x W^T + b``: the projection becomes
    ``y + delta(x)``, with ``delta_weight()`` the matrix ``dW`` [out, in] of the same update when it is linear
    (``y = x (W + dW)^T + b``), which :func:`merge_weight_deltas` adds into the weights for deployment."""

    def __call__(self, x: Tensor) -> Tensor: ...

    def delta_weight(self) -> Tensor: ...


PROJECTIONS: tuple[str, ...] = ("q", "k", "v", "o")
"""The attention projections a :class:`WeightDelta` can act on: the query, key and value rows of the packed
input projection (rows ``0:D``, ``D:2D``, ``2D:3D``) and the output projection ``out_proj``."""
AttentionDeltas = Mapping[str, WeightDelta]
"""The weight deltas of one block's attention, by projection name (a subset of :data:`PROJECTIONS`)."""
BlockWeightDeltas = Sequence[AttentionDeltas | None]
"""One entry per block (``None``: that block's weights as they are)."""


def merge_weight_deltas(transformer: Transformer, weight_deltas: BlockWeightDeltas, sign: float = 1.0) -> None:
    """Add ``sign * delta_weight()`` of every delta into the attention weights of ``transformer`` in place
    (``sign`` -1 takes a merge back): afterwards the plain blocks compute what the deltas did, at no cost."""
    blocks = list(weight_deltas)
    layers = len(transformer.resblocks)
    if len(blocks) > layers:
        raise ValueError(f"{len(blocks)} sets of weight deltas for a transformer of {layers} layers")
    updates: list[tuple[Tensor, WeightDelta]] = []  # checked first: a bad entry merges nothing
    for block, deltas in zip(transformer.resblocks, blocks, strict=False):
        for name, delta in (deltas or {}).items():
            if name not in PROJECTIONS:
                raise ValueError(f"weight delta for unknown projection {name!r}; known: {PROJECTIONS}")
            attn = block.attn
            d = attn.out_proj.in_features
            j = "qkv".find(name)
            updates.append((attn.out_proj.weight if name == "o" else attn.in_proj_weight[j * d : (j + 1) * d], delta))
    with torch.no_grad():
        for target, delta in updates:
            target.add_(delta.delta_weight().to(target.dtype), alpha=sign)
