"""The method contract's small value types: a training objective, the dataset context, encoder options
(the hooks are in :mod:`mmprompt.methods.learner`).

A prompt learner returns an :class:`Objective` from ``learner(images, labels)``: the total that is
back-propagated plus every named loss term (unweighted), all means over the learner's own batch. The
engine scales the total for gradient accumulation and data parallelism, logs every term, and stops on a
non-finite term. Terms listed in ``grad_terms`` are not descended: the engine accumulates their gradients
separately and hands them to :meth:`~mmprompt.methods.learner.PromptLearner.transform_gradients`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..checks import check_bool, check_int

__all__ = ["DatasetContext", "EncoderOptions", "LabelsUnavailableError", "NoLabels", "Objective",
           "cross_entropy_objective"]


@dataclass
class Objective:
    """What one training forward returns (inside the DDP-wrapped forward)."""

    total: Tensor
    """0-d: the weighted sum that is back-propagated (a mean over this batch)."""
    terms: dict[str, Tensor]
    """Unweighted named terms, 0-d each (e.g. ``ce``, ``kg``), logged per step and per epoch."""
    logits: Tensor | None = None
    """Training logits [B, C] for the training accuracy (None: not reported)."""
    grad_terms: dict[str, Tensor] = field(default_factory=dict)
    """Terms whose gradients are accumulated apart from the total's and passed to
    ``transform_gradients`` before the optimizer step (ProGrad's ``kl``); they are not descended."""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    """Intermediate tensors for checks (``teacher/text_features``, ``student/image_features``...)."""

    def values(self) -> dict[str, Tensor]:
        """Every reported scalar: the terms and ``loss`` (the total)."""
        return {**self.terms, "loss": self.total}


def cross_entropy_objective(logits: Tensor, labels: Tensor, **tensors: Tensor) -> Objective:
    """The default objective: mean cross-entropy of ``logits`` [B, C] on ``labels`` [B] (term ``ce``)."""
    ce = F.cross_entropy(logits.float(), labels)
    return Objective(total=ce, terms={"ce": ce}, logits=logits, tensors=dict(tensors))


@dataclass(frozen=True)
class DatasetContext:
    """What a method may know about the dataset besides its class names."""

    name: str | None = None
    """Canonical dataset key (``eurosat``, ``imagenet``...; see :func:`mmprompt.names.canonical`)."""
    template: str | None = None
    """The dataset's own hand-written prompt template, with ``{}`` for the class name."""
    descriptions: Mapping[str, Sequence[str]] | None = field(default=None, hash=False)
    """Class descriptions, class name -> sentences (``--descriptions FILE``), for the methods that read
    them (``uses_descriptions``; match them to the classes with :func:`mmprompt.descriptions.
    match_descriptions`). None: none were given."""
    descriptions_source: str | None = field(default=None, compare=False, hash=False)
    """Where ``descriptions`` came from (a file name), for error messages."""


@dataclass
class EncoderOptions:
    """How class prompts are run through the text encoder. These change speed and memory, never the
    numbers (each option is exact; ``mmprompt parity`` checks every combination)."""

    text_chunk_size: int = 0
    """Encode class prompts in chunks of this many classes with activation checkpointing when
    gradients are needed (0: automatic, see ``text_chunk_tokens``). Same loss and gradients, bounded
    memory."""
    text_chunk_tokens: int = 4096
    """With ``text_chunk_size`` 0: once the prompts hold more than this many tokens (classes x encoded
    length, e.g. ImageNet's 1000 classes), encode them in chunks of at most this many tokens
    (0: always all at once). 4096 tokens of ViT-B/16 text keep about 2 GB of activations."""
    truncate_text: bool = True
    """Run the text encoder on each prompt only up to its EOT, packed without padding (exact under the
    causal mask); False: over the full context, as the official code."""
    share_text_prefix: bool = True
    """With ``truncate_text``: compute the leading positions that every class prompt shares (SOT, the
    context, common words before the class name) once instead of once per class (exact under the
    causal mask)."""

    def __post_init__(self) -> None:
        check_int("encoder.text_chunk_size", self.text_chunk_size, minimum=0)
        check_int("encoder.text_chunk_tokens", self.text_chunk_tokens, minimum=0)
        check_bool("encoder.truncate_text", self.truncate_text)
        check_bool("encoder.share_text_prefix", self.share_text_prefix)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> EncoderOptions:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown encoder option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LabelsUnavailableError(RuntimeError):
    """A transductive learner tried to read the labels of its (unlabelled) training batch."""


class NoLabels:
    """What a transductive learner's :meth:`objective` gets instead of labels: any use raises
    :class:`LabelsUnavailableError` (the engine trains such learners on images only)."""

    __slots__ = ("batch_size",)

    def __init__(self, batch_size: int) -> None:
        object.__setattr__(self, "batch_size", int(batch_size))

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise LabelsUnavailableError("transductive training has no labels: the objective must not read them")

    def __getattr__(self, name: str) -> Any:
        self._refuse()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise LabelsUnavailableError("transductive training has no labels: the objective must not read them")

    __len__ = __iter__ = __getitem__ = __index__ = __int__ = __bool__ = __array__ = __eq__ = __hash__ = _refuse
