"""Packed causal sequences: where each token of ``B`` variable-length sequences goes when padded for
attention, and the index tensors and masks derived from that, made once per layout (see
:meth:`mmprompt.clip.transformer.Transformer.forward_last`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["PackedLayout", "replace_packed"]


class PackedLayout:
    """Where the packed tokens of ``B`` causal sequences go when padded for attention.

    Sequence ``b`` has ``lengths[b]`` tokens (after ``offset`` shared positions); packed, the tokens
    are in sequence order, ``T = lengths.sum()`` rows; padded, they sit in rows of
    ``[B * longest]``. A layout made by :meth:`from_lengths` (from host lengths, no device
    synchronisation) can serve many calls: the index tensors and attention masks derived from it
    are made once (:meth:`gather_index`, :meth:`attention_mask`, :meth:`prompt_slots`).
    """

    def __init__(self, lengths: Tensor, offset: int, longest: int, padded_index: Tensor,
                 host_lengths: Sequence[int] | None = None) -> None:
        self.lengths = lengths  # [B]
        self.offset = offset
        self.longest = longest
        self.host_lengths = None if host_lengths is None else tuple(int(n) for n in host_lengths)
        self.padded_index = padded_index  # [T] row of each packed token in [B * longest]
        self.sequence = padded_index // longest  # [T]
        self.positions = padded_index % longest  # [T] (counted from the offset)
        self.last = torch.cumsum(lengths, 0) - 1  # [B] the packed row of each sequence's last token
        self._derived: dict[tuple[Any, ...], Any] = {}

    @classmethod
    def build(cls, lengths: Tensor, offset: int = 0) -> PackedLayout:
        longest = int(lengths.max())
        valid = torch.arange(longest, device=lengths.device) < lengths.unsqueeze(1)  # [B, longest]
        return cls(lengths, offset, longest, valid.flatten().nonzero().squeeze(1))

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], offset: int, device: torch.device | str) -> PackedLayout:
        """The layout of sequences of ``lengths`` (host integers, counted after ``offset``) on ``device``,
        made without reading anything back from the device; its tensors are never inference tensors,
        so one layout serves evaluation and training alike."""
        host = [int(n) for n in lengths]
        if not host or min(host) < 1:
            raise ValueError(f"every packed sequence needs at least one position, got lengths {host}")
        longest = max(host)
        with torch.inference_mode(False), torch.no_grad():
            on_host = torch.tensor(host)
            valid = torch.arange(longest) < on_host.unsqueeze(1)  # [B, longest], on the host: no device read
            index = valid.flatten().nonzero().squeeze(1)
            return cls(on_host.to(device), offset, longest, index.to(device), host)

    def _lasting(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """``make()`` once per ``key`` (outside inference mode, so that training can save it)."""
        hit = self._derived.get(key)
        if hit is None:
            with torch.inference_mode(False), torch.no_grad():
                hit = self._derived[key] = make()
        return hit

    def absolute_positions(self) -> Tensor:
        """[T] the position of each packed token in its sequence (``offset`` included)."""
        return self._lasting(("positions",), lambda: self.positions + self.offset)

    def gather_index(self, length: int) -> Tensor:
        """[T] the row of each packed token in sequences of ``length`` positions flattened to
        ``[B * length]`` (its position is ``offset`` + its position in the layout)."""
        return self._lasting(("gather", length), lambda: self.sequence * length + self.absolute_positions())

    def attention_mask(self, past: int, last_only: bool = False) -> Tensor:
        """Causal mask (True = attend) over ``past`` shared keys then the padded keys: [S, past + S] for every
        padded query, or [B, 1, 1, past + S] for each sequence's last query (``last_only``)."""

        def make() -> Tensor:
            keys = torch.arange(past + self.longest, device=self.lengths.device)
            if last_only:
                return keys <= (self.lengths - 1).view(-1, 1, 1, 1) + past
            return keys <= torch.arange(self.longest, device=keys.device).unsqueeze(1) + past

        return self._lasting(("mask", past, last_only), make)

    def prompt_slots(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """Which packed tokens lie at positions ``start .. start + n`` ([T, 1] bool) and which of the ``n``
        prompts each takes ([T], clamped for the others): see :func:`replace_packed`."""

        def make() -> tuple[Tensor, Tensor]:
            pos = self.absolute_positions()
            inside = (pos >= start) & (pos < start + n)
            return inside.unsqueeze(1), (pos - start).clamp(0, n - 1)

        return self._lasting(("slots", start, n), make)

    @property
    def num_sequences(self) -> int:
        return self.lengths.shape[0]

    def pad(self, rows: Tensor) -> Tensor:
        """Packed rows [T, F] -> [B, longest, F] (zeros after each sequence's end)."""
        padded = rows.new_zeros(self.num_sequences * self.longest, rows.shape[-1])
        return padded.index_copy(0, self.padded_index, rows).view(self.num_sequences, self.longest, -1)

    def unpad(self, padded: Tensor) -> Tensor:
        """[B, longest, F] -> packed rows [T, F]."""
        return padded.reshape(self.num_sequences * self.longest, -1).index_select(0, self.padded_index)


def replace_packed(tokens: Tensor, prompts: Tensor, start: int, positions: Tensor, sequence: Tensor,
                   slots: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Packed ``tokens`` [T, D] with positions ``start .. start + n`` replaced by ``prompts`` ([n, D],
    or [B, n, D] per sequence); ``positions`` / ``sequence`` [T] say where each token belongs.
    ``slots``: :meth:`PackedLayout.prompt_slots` of these positions, when made beforehand."""
    n = prompts.shape[-2]
    if slots is None:
        inside = ((positions >= start) & (positions < start + n)).unsqueeze(1)
        index = (positions - start).clamp(0, n - 1)
    else:
        inside, index = slots
    prompts = prompts.to(tokens.dtype)
    if prompts.dim() == 3 and prompts.shape[0] == 1:
        prompts = prompts[0]
    values = prompts[index] if prompts.dim() == 2 else prompts[sequence, index]  # [T, D]
    return torch.where(inside, values, tokens)
