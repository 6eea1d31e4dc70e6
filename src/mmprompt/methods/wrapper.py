"""Methods that wrap another learner: composition, not inheritance.

A method that adds something around *any* learner of the method table (DePT's second head over CoOp, MaPLe,
KgCoOp...; a distilled student; a plug-in that re-weights another method's prompts) subclasses
:class:`LearnerWrapper`. It names the learner to wrap in :meth:`~LearnerWrapper.inner_method`; the wrapper
builds it through the method table on the same frozen CLIP (shared, registered once, at ``clip``) and holds
it as a component at ``self.trainable.<inner_slot>``, so the inner learner's trainable tensors are the
wrapper's too (``trainable.base.trainable.ctx``: saved, optimised and resumed with no extra code). The
wrapper's own modules go under ``self.trainable`` in :meth:`~LearnerWrapper.build_wrapper`.

Every hook delegates to the inner learner until the wrapper overrides it: a wrapper that overrides nothing
gives the inner learner's logits, objective, gradients transform, epoch hook and training state exactly.
:meth:`~LearnerWrapper.recording` hands the wrapper the raw features the inner learner computes inside one
of its own hooks, so a second head can reuse them without a second encoder pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..clip.model import CLIP, BlockAdapters, DeepPrompts
from ..clip.tokenizer import Tokenizer
from .contract import Objective
from .learner import TRAINABLE_PREFIX, MethodConfig, ParameterGroup, PromptLearner

__all__ = ["FeatureRecord", "LearnerWrapper"]


class FeatureRecord:
    """The raw features an inner learner computed during one call (see :meth:`LearnerWrapper.recording`)."""

    def __init__(self) -> None:
        self.text: list[Tensor] = []
        self.image: list[Tensor] = []

    def one(self, kind: str, given: Tensor | None = None) -> Tensor:
        """The one ``kind`` (``text`` or ``image``) feature tensor of the call; ``given`` when the call
        computed none (class text features passed in from a cache)."""
        seen = self.text if kind == "text" else self.image
        if given is not None and not seen:
            return given
        if len(seen) != 1:
            raise RuntimeError(f"the wrapped learner must compute its {kind} features once per call through "
                               f"{kind}_features(); it did so {len(seen)} times")
        return seen[0]


class LearnerWrapper(PromptLearner):
    """A learner that holds another learner of the method table (:attr:`inner`) and delegates to it.

    Subclasses implement :meth:`inner_method` and usually :meth:`build_wrapper`, then override the hooks
    they change (typically :meth:`objective` and :meth:`logits` / :meth:`predict_logits`).
    """

    inner_slot: ClassVar[str] = "base"
    """Where the inner learner sits: ``self.trainable.<inner_slot>`` (its tensors are ``trainable.<slot>.*``)."""

    def __init__(
        self, clip: CLIP, classnames: Sequence[str], config: MethodConfig, tokenizer: Tokenizer | None = None,
        **context: Any,
    ) -> None:
        self._wrap_classnames = list(classnames)  # build_prompts runs inside PromptLearner.__init__
        super().__init__(clip, classnames, config, tokenizer, **context)
        del self._wrap_classnames

    # ----- what a wrapping method provides -------------------------------------------------------------
    def inner_method(self) -> tuple[str, MethodConfig]:
        """The method (a name of the table) and the config of the learner to wrap."""
        raise NotImplementedError

    def build_wrapper(self) -> None:
        """Create the wrapper's own trainable modules under ``self.trainable`` (the inner learner exists)."""

    # ----- the inner learner ---------------------------------------------------------------------------
    def build_prompts(self) -> None:
        from .table import get_method  # lazy: the table imports the methods

        method, config = self.inner_method()
        spec = get_method(method)
        inner = spec.learner(self.clip, self._wrap_classnames, config, self.tokenizer, dataset=self.dataset,
                             encoder=self.encoder)
        # One frozen CLIP, registered here only, so that nothing of it sits under ``trainable``; the inner
        # learner keeps a plain reference for its own forward.
        del inner._modules["clip"]
        object.__setattr__(inner, "clip", self.clip)
        stray = [n for n, _ in inner.named_parameters() if not n.startswith(TRAINABLE_PREFIX)]
        if stray:
            raise ValueError(f"{self.method} cannot wrap {spec.name}: it holds parameters outside its trainable "
                             f"module {stray[:5]}")
        self.image_conditioned_text = inner.image_conditioned_text  # type: ignore[misc]
        self.class_specific = inner.class_specific  # type: ignore[misc]
        # a wrapper that itself trains transductively (PromptKD's student) stays so over an inductive inner learner
        self.transductive = type(self).transductive or inner.transductive  # type: ignore[misc]
        self.uses_descriptions = inner.uses_descriptions  # type: ignore[misc]
        setattr(self.trainable, self.inner_slot, inner)
        self.build_wrapper()

    @property
    def inner(self) -> PromptLearner:
        """The wrapped learner."""
        return getattr(self.trainable, self.inner_slot)

    @classmethod
    def inner_state(cls, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The inner learner's tensors of a wrapper's ``state``, under the inner learner's own names."""
        prefix = f"{TRAINABLE_PREFIX}{cls.inner_slot}."
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

    def own_parameters(self) -> list[nn.Parameter]:
        """The wrapper's own trainable parameters (not the inner learner's), in registration order."""
        inner = {id(p) for p in self.inner.parameters()}
        return [p for p in self.trainable_parameters() if id(p) not in inner]

    @contextlib.contextmanager
    def recording(self) -> Iterator[FeatureRecord]:
        """Record the raw text and image features the inner learner computes during the ``with`` block
        (e.g. inside its own ``objective`` or ``logits``), with their gradients."""
        inner, seen = self.inner, FeatureRecord()
        text_fn, image_fn = inner.text_features, inner.image_features

        def text() -> Tensor:
            seen.text.append(text_fn())
            return seen.text[-1]

        def image(images: Tensor) -> Tensor:
            seen.image.append(image_fn(images))
            return seen.image[-1]

        object.__setattr__(inner, "text_features", text)
        object.__setattr__(inner, "image_features", image)
        try:
            yield seen
        finally:
            object.__delattr__(inner, "text_features")
            object.__delattr__(inner, "image_features")
            self.last_text_shared_prefix = inner.last_text_shared_prefix

    # ----- every hook: the inner learner's ---------------------------------------------------------------
    def prepare_classes(self, classnames: list[str]) -> None:
        inner = self.inner
        if list(inner.classnames) != list(self.classnames) or inner.dataset != self.dataset:
            inner.set_classnames(self.classnames, dataset=self.dataset)

    def text_features(self) -> Tensor:
        out = self.inner.text_features()
        self.last_text_shared_prefix = self.inner.last_text_shared_prefix
        return out

    def vision_prompts(self) -> tuple[Tensor | None, DeepPrompts | None]:
        return self.inner.vision_prompts()

    def block_adapters(self) -> tuple[BlockAdapters | None, BlockAdapters | None]:
        return self.inner.block_adapters()

    def image_features(self, images: Tensor) -> Tensor:
        return self.inner.image_features(images)

    def logit_scale(self) -> Tensor:
        return self.inner.logit_scale()

    def logits(self, images: Tensor) -> Tensor:
        return self.inner.logits(images)

    def train_logits(self, images: Tensor) -> Tensor:
        return self.inner.train_logits(images)

    @torch.no_grad()
    def class_text_features(self) -> Tensor | None:
        return self.inner.class_text_features()

    def predict_logits(self, images: Tensor, text_features: Tensor | None) -> Tensor:
        return self.inner.predict_logits(images, text_features)

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        return self.inner.eval_tensors(images)

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        return self.inner.objective(images, labels)

    def parameter_groups(self) -> list[ParameterGroup]:
        """The inner learner's groups as it defines them, then the wrapper's own parameters at 1.0."""
        own = self.own_parameters()
        return [*self.inner.parameter_groups(), *([(own, 1.0)] if own else [])]

    def transform_gradients(self, grad_terms: Mapping[str, list[Tensor | None]]) -> None:
        """The inner learner's transform on its own parameters (``grad_terms`` picked out for them, in the
        inner learner's order); the wrapper's own gradients are left as they are."""
        if grad_terms:
            index = {id(p): i for i, p in enumerate(self.trainable_parameters())}
            rows = [index[id(p)] for p in self.inner.trainable_parameters()]
            self.inner.transform_gradients({k: [v[i] for i in rows] for k, v in grad_terms.items()})

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        self.inner.on_epoch_end(epoch, epochs)

    def training_state(self) -> dict[str, Tensor]:
        return self.inner.training_state()

    def load_training_state(self, state: Mapping[str, Tensor]) -> None:
        self.inner.load_training_state(state)
