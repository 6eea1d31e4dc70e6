"""The method contract: what a prompt learner provides, hook by hook.

A prompt learner wraps a frozen :class:`~mmprompt.clip.model.CLIP` (``self.clip``) and keeps every tensor
that trains under ``self.trainable`` (prompt tokens, heads, adapters, low-rank updates). One predicate,
:func:`is_trainable` (the name starts with ``trainable.``), decides what requires gradients, what the
optimizer gets and what a checkpoint saves. ``self.prompt``, the container's former name, is an alias of
the same module (a property, not a second submodule), so learners written against it keep working;
checkpoints and training states written with ``prompt.*`` names load unchanged
(:meth:`PromptLearner.load_prompt_state_dict`).

The hooks are below in the order a method meets them; the text-encoding machinery they call
(``encode_text``, ``embed_prompts``, the frozen teachers) is in :mod:`mmprompt.methods.encoding`, the
value types (:class:`~mmprompt.methods.contract.Objective`, ...) in :mod:`mmprompt.methods.contract`, and a
method that wraps another learner starts from :class:`~mmprompt.methods.wrapper.LearnerWrapper`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip.model import CLIP, BlockAdapters, BlockWeightDeltas, DeepPrompts, merge_weight_deltas
from ..clip.tokenizer import Tokenizer
from .contract import DatasetContext, EncoderOptions, Objective, cross_entropy_objective
from .encoding import TextEncoding, clean_classnames
from .teacher import Teacher

__all__ = ["LEGACY_CONTAINER", "TRAINABLE_CONTAINER", "TRAINABLE_PREFIX", "MethodConfig", "ParameterGroup", "PromptLearner",
           "is_trainable", "legacy_name"]

TRAINABLE_CONTAINER = "trainable"
TRAINABLE_PREFIX = TRAINABLE_CONTAINER + "."
LEGACY_CONTAINER = "prompt"
"""The trainable container's former name (checkpoints and training states written before the rename use
``prompt.*``)."""

ParameterGroup = tuple[list[nn.Parameter], float] | tuple[list[nn.Parameter], float, float]
"""``(parameters, lr multiplier)`` or ``(parameters, lr multiplier, weight decay)`` (see
:meth:`PromptLearner.parameter_groups`)."""


def is_trainable(name: str) -> bool:
    """The one predicate: a parameter trains (and is saved) iff it lives under ``trainable``."""
    return name.startswith(TRAINABLE_PREFIX)


def legacy_name(name: str) -> str:
    """The name a trainable tensor had before the container was renamed: every ``trainable`` level is
    ``prompt`` (``trainable.ctx`` was ``prompt.ctx``, DePT's ``trainable.base.trainable.ctx`` was
    ``prompt.base.prompt.ctx``)."""
    return ".".join(LEGACY_CONTAINER if part == TRAINABLE_CONTAINER else part for part in name.split("."))


@dataclasses.dataclass
class MethodConfig:
    """Options shared by every method (each method's config extends it)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_model(self, clip: CLIP) -> None:
        """Raise ValueError if the config does not fit this CLIP (e.g. a depth beyond its layers)."""

    def __post_init__(self) -> None:
        """Validate the fields (subclasses extend this)."""


class TeacherRequiredError(ValueError):
    """A learner with ``needs_teacher`` was built without a teacher."""


def _persistent(module: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    return leaf not in sub._non_persistent_buffers_set


class PromptLearner(TextEncoding, nn.Module):
    """A frozen CLIP, trainable modules under ``self.trainable``, logits and a training objective.

    A method implements :meth:`build_prompts`, :meth:`prepare_classes`, :meth:`text_features` and, when it
    prompts the image tower, :meth:`vision_prompts`; every other hook has a default it may override.
    """

    method: ClassVar[str] = ""
    image_conditioned_text: ClassVar[bool] = False
    """True when class text features depend on the image (CoCoOp): no caching across images."""
    class_specific: ClassVar[bool] = False
    """True when prompts are tied to the training class names (class-specific CoOp)."""
    needs_teacher: ClassVar[bool] = False
    """True when the learner distils from a frozen teacher (PromptKD): the engine then loads the teacher
    (``--teacher RUN_DIR_OR_CKPT``) and passes it as ``teacher=`` to the constructor, where it is
    ``self.teacher`` before :meth:`build_prompts` runs. The teacher is never saved with the student."""
    transductive: ClassVar[bool] = False
    """True when the learner trains on UNLABELLED images of the evaluation classes (PromptKD): the engine
    then trains on the full training split of every class of the dataset (no few-shot sampling) and
    gives :meth:`objective` a :class:`~mmprompt.methods.contract.NoLabels` object instead of labels."""
    uses_descriptions: ClassVar[bool] = False
    """True when the method reads class descriptions (``self.dataset.descriptions``, from ``--descriptions
    FILE``); see :meth:`needs_descriptions`."""
    inference_paths: ClassVar[tuple[str, ...]] = ()
    """Named evaluation paths (MMRL: ``("base", "novel")``); empty: one path. See :meth:`set_inference_path`."""

    def __init__(
        self,
        clip: CLIP,
        classnames: Sequence[str],
        config: MethodConfig,
        tokenizer: Tokenizer | None = None,
        *,
        dataset: DatasetContext | None = None,
        encoder: EncoderOptions | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        config.check_model(clip)
        self.config = config
        self.encoder = encoder or EncoderOptions()
        self.clip = clip
        self.clip.requires_grad_(False)
        self.tokenizer = tokenizer or clip.get_tokenizer()
        if self.needs_teacher and teacher is None:
            raise TeacherRequiredError(f"{self.method} distils from a teacher: pass --teacher RUN_DIR_OR_CKPT "
                                       "(an mmprompt run or prompt checkpoint, or an official teacher checkpoint)")
        self.teacher = teacher if self.needs_teacher else None
        if self.teacher is not None:
            self.check_teacher(self.teacher)
        self.dataset = dataset or DatasetContext()
        self._teacher_cache: dict[tuple[Any, ...], Tensor] = {}
        self._said_slow = False
        self.trainable = nn.Module()
        self.build_prompts()
        if LEGACY_CONTAINER in self._modules:
            raise TypeError(f"{type(self).__name__}.build_prompts assigned self.{LEGACY_CONTAINER}: it is an alias of "
                            "self.trainable; add modules and parameters to it instead of replacing it")
        for name, param in self.named_parameters():
            param.requires_grad_(is_trainable(name))
        self.classnames: list[str] = []
        self.trained_on: tuple[tuple[str, ...], str | None] = (tuple(classnames), self.dataset.name)
        """The class names and dataset key the learner was built for (its training classes)."""
        self.inference_path: str | None = self.inference_paths[0] if self.inference_paths else None
        """The evaluation path :meth:`logits` takes (None: the method has one path)."""
        self.last_text_shared_prefix = 0
        """The shared prefix length the last :meth:`encode_text` used (for benchmarks and logs)."""
        self.set_classnames(classnames, dataset=self.dataset)

    @property
    def prompt(self) -> nn.Module:
        """The trainable container under its former name (an alias of ``self.trainable``, not a second module)."""
        return self.trainable

    # ----- what a method provides ----------------------------------------------------------------------
    def build_prompts(self) -> None:
        """Create the trainable parameters and modules under ``self.trainable``."""

    def prepare_classes(self, classnames: list[str]) -> None:
        """Build the class-dependent, non-persistent buffers for ``classnames`` (already cleaned)."""
        raise NotImplementedError

    def text_features(self) -> Tensor:
        """Class text features [C, E], not normalised (methods whose text does not depend on the image)."""
        raise NotImplementedError

    def vision_prompts(self) -> tuple[Tensor | None, DeepPrompts | None]:
        """Prompts for the image encoder: (input prompts, per-block prompts). Default: none."""
        return None, None

    def block_adapters(self) -> tuple[BlockAdapters | None, BlockAdapters | None]:
        """Residual adapters per block of the (vision, text) towers (see :class:`~mmprompt.clip.model.
        CLIP`). Default: none."""
        return None, None

    # ----- weight-space adapters (updates of the frozen CLIP's attention weights; CLIP-LoRA) -------------
    def weight_adapters(self) -> tuple[BlockWeightDeltas | None, BlockWeightDeltas | None]:
        """Updates of the attention projections per block of the (vision, text) towers: entry ``i`` maps
        ``q`` / ``k`` / ``v`` / ``o`` to a :class:`~mmprompt.clip.model.WeightDelta` (a module under
        ``self.trainable``, e.g. a low-rank ``s * B @ A``), applied beside the frozen weight with no patched
        copy of CLIP (see :mod:`mmprompt.clip.model`). Default: none."""
        return None, None

    @property
    def weights_merged(self) -> bool:
        """Whether :meth:`merge_weight_adapters` has folded the weight adapters into the CLIP."""
        return bool(self.__dict__.get("_weights_merged", False))

    def active_weight_adapters(self) -> tuple[BlockWeightDeltas | None, BlockWeightDeltas | None]:
        """What the encoders apply: :meth:`weight_adapters`, or nothing once they are merged."""
        return (None, None) if self.weights_merged else self.weight_adapters()

    def merge_weight_adapters(self) -> None:
        """Add every weight adapter's ``delta_weight()`` into the CLIP's attention weights, for deployment:
        the same logits (to float rounding) with no adapter cost. The adapters stay (and a checkpoint still
        holds only them); :meth:`unmerge_weight_adapters` takes the merge back. Merging twice is refused, and
        so is training a merged learner."""
        if self.weights_merged:
            raise RuntimeError(f"{self.method}: the weight adapters are already merged into the CLIP weights; "
                               "merging again would add them twice (unmerge_weight_adapters() first)")
        vision, text = self.weight_adapters()
        if vision is None and text is None:
            raise RuntimeError(f"{self.method} has no weight adapters to merge")
        self._apply_weight_adapters(1.0)
        self.__dict__["_weights_merged"] = True

    def unmerge_weight_adapters(self) -> None:
        """Subtract what :meth:`merge_weight_adapters` added (the CLIP's weights again, to float rounding)."""
        if not self.weights_merged:
            raise RuntimeError(f"{self.method}: the weight adapters are not merged; nothing to unmerge")
        self._apply_weight_adapters(-1.0)
        self.__dict__["_weights_merged"] = False

    def _apply_weight_adapters(self, sign: float) -> None:
        vision, text = self.weight_adapters()
        if vision is not None:
            merge_weight_deltas(self.clip.visual.transformer, vision, sign)
        if text is not None:
            merge_weight_deltas(self.clip.transformer, text, sign)
        self._teacher_cache.clear()  # the frozen CLIP changed

    def train(self, mode: bool = True) -> PromptLearner:
        if mode and self.weights_merged:
            raise RuntimeError(f"{self.method}: the weight adapters are merged into the CLIP (deployment); "
                               "unmerge_weight_adapters() before training")
        return super().train(mode)

    # ----- features and logits -------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        """Image features [B, E], not normalised, with this method's vision prompts and adapters."""
        prompts, deep = self.vision_prompts()
        adapters = self.block_adapters()[0]
        return self.clip.encode_image(images, prompts=prompts, deep_prompts=deep, adapters=adapters,
                                      weight_deltas=self.active_weight_adapters()[0])

    def logit_scale(self) -> Tensor:
        """The temperature of :meth:`logits_from` (default: CLIP's own)."""
        return self.clip.logit_scale.exp().float()

    def logits_from(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Scaled cosine logits [B, C] from (un-normalised) image [B, E] and text [C, E] features."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        return self.logit_scale() * img @ txt.t()

    def logits(self, images: Tensor) -> Tensor:
        """Evaluation logits [B, C] for ``images`` against the current classes."""
        return self.logits_from(self.image_features(images), self.text_features())

    def train_logits(self, images: Tensor) -> Tensor:
        """Training logits [B, C] (default: the evaluation logits)."""
        return self.logits(images)

    @torch.no_grad()
    def class_text_features(self) -> Tensor | None:
        """Class text features [C, E] to reuse across evaluation batches, or None when they depend on
        the image (then :meth:`forward` must be used per batch)."""
        if self.image_conditioned_text:
            return None
        return self.text_features()

    def predict_logits(self, images: Tensor, text_features: Tensor | None) -> Tensor:
        """Evaluation logits using cached class text features when given (see :meth:`class_text_features`)."""
        if text_features is None:
            return self.logits(images)
        return self.logits_from(self.image_features(images), text_features)

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """Named intermediate tensors of the evaluation forward, for checks against reference files
        (e.g. each head's logits). Default: none."""
        return {}

    # ----- separate inference paths (docs/writing-a-method.md 3.1; MMRL) ----------------------------
    # A learner naming ``inference_paths`` reads ``self.inference_path`` in logits / predict_logits: the
    # FIRST path serves its training classes, the LAST everything else (the engine's protocol_path).
    def set_inference_path(self, path: str | None) -> None:
        """Evaluate along ``path`` from now on (None: the default, the first path). Raises ValueError for
        a path the method does not declare, or any path for a method without paths."""
        if not self.inference_paths:
            if path is not None:
                raise ValueError(f"method {self.method!r} has a single inference path; path {path!r} does not apply")
            return
        path = self.inference_paths[0] if path is None else path
        if path not in self.inference_paths:
            raise ValueError(f"unknown inference path {path!r} for method {self.method!r}; "
                             f"its paths: {', '.join(self.inference_paths)}")
        self.inference_path = path

    def protocol_path(self) -> str | None:
        """The path for the current classes: the first path when they are the training classes of the
        training dataset (base classes, few-shot, the transfer source), the last one otherwise (novel
        classes, other datasets, domain shift). None for a method without paths."""
        if not self.inference_paths:
            return None
        names, dataset = self.trained_on
        seen = tuple(self.classnames) == names and (dataset is None or self.dataset.name in (None, dataset))
        return self.inference_paths[0] if seen else self.inference_paths[-1]

    # ----- training ------------------------------------------------------------------------------------
    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        """The training objective on a batch (default: cross-entropy of :meth:`train_logits`)."""
        return cross_entropy_objective(self.train_logits(images), labels)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor | Objective:
        """Logits [B, C] for ``images``; with ``labels``, the training :class:`Objective` instead (so
        that the objective runs inside a DDP-wrapped forward)."""
        if labels is None:
            return self.logits(images)
        return self.objective(images, labels)

    def parameter_groups(self) -> list[ParameterGroup]:
        """Trainable parameters in groups, each ``(parameters, lr multiplier)`` or ``(parameters, lr
        multiplier, weight decay)`` (the third overrides ``optim.weight_decay`` for that group). Default:
        one group at 1.0. The warm-up rate is the same for every group; the multiplier scales the base rate."""
        return [(self.trainable_parameters(), 1.0)]

    def transform_gradients(self, grad_terms: Mapping[str, list[Tensor | None]]) -> None:
        """Change the gradients (``p.grad`` of :meth:`trainable_parameters`, in that order) before the
        optimizer step. ``grad_terms`` holds, per name in :attr:`Objective.grad_terms`, the gradient of
        that term for each trainable parameter (None: no gradient), accumulated and reduced exactly like
        ``p.grad``: summed over the micro-batches of the step and averaged over processes. Default:
        nothing."""

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called after the optimizer and schedule have finished 0-based ``epoch`` of ``epochs`` and
        before the training state is saved (e.g. to average prompts over epochs). Default: nothing."""

    def training_state(self) -> dict[str, Tensor]:
        """State of :meth:`on_epoch_end` that must survive a resume (saved in the training state)."""
        return {}

    def load_training_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore what :meth:`training_state` returned."""
        if state:
            raise ValueError(f"{self.method} keeps no training state, but the checkpoint has {sorted(state)}")

    def inject_draws(self, draws: Mapping[str, Tensor]) -> None:
        """Use ``draws`` (name -> tensor, e.g. ``template_index`` or ``dropout/main/text/4``) instead of random
        ones in the next training forward, so a test can feed the random draws recorded from the official
        code (the reference files' ``rand/*``). Default: the method draws nothing, so any draw is refused."""
        if draws:
            raise ValueError(f"{self.method} makes no random draws; cannot inject {sorted(draws)}")

    # ----- saved tensors (import-official) -------------------------------------------------------------
    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """Config values that the shapes of saved trainable tensors fix (``import-official``)."""
        return {}

    @classmethod
    def classes_needed(cls, state: Mapping[str, Tensor], config: MethodConfig) -> int | None:
        """How many training class names saved tensors are tied to (None: they work with any names)."""
        return None

    # ----- a teacher (PromptKD; docs/writing-a-method.md) --------------------------------------------
    @classmethod
    def official_teacher(cls, config: MethodConfig) -> tuple[str, dict[str, Any]]:
        """For a learner with ``needs_teacher``: the method and options of the teacher that the official
        code builds (what an official teacher checkpoint holds; ``mmprompt parity`` builds it the same way)."""
        raise NotImplementedError(f"{cls.method} names no official teacher design")

    def check_teacher(self, teacher: Teacher) -> None:
        """Raise :class:`~mmprompt.methods.teacher.TeacherMismatchError` when ``teacher`` does not fit this
        learner (default: nothing to check)."""

    # ----- class descriptions (MMA++) ----------------------------------------------------------------
    @classmethod
    def needs_descriptions(cls, config: MethodConfig) -> bool:
        """Whether ``config`` cannot run without class descriptions (default: False). The learner reads
        them from ``self.dataset.descriptions`` in :meth:`prepare_classes`."""
        return False

    # ----- what the engine calls (not overridden) --------------------------------------------------------
    def set_classnames(self, classnames: Sequence[str], dataset: DatasetContext | None = None) -> None:
        """Point the learner at a new list of classes (prompts are reused as they are), optionally of
        another dataset (its name and template, for methods whose teacher or prompts use them)."""
        names = clean_classnames(classnames)
        previous = (self.classnames, self.dataset)
        self.classnames = list(classnames)
        if dataset is not None:
            self.dataset = dataset
        self._teacher_cache.clear()
        try:
            self.prepare_classes(names)
        except Exception:
            self.classnames, self.dataset = previous
            raise

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """The trainable parameters by full name (``trainable.*``), in registration order."""
        return {n: p for n, p in self.named_parameters() if is_trainable(n)}

    def _prompt_tensors(self) -> dict[str, Tensor]:
        """The trainable parameters and the persistent buffers of trainable modules (e.g. a BatchNorm's
        running statistics under ``trainable``), by full name."""
        own: dict[str, Tensor] = dict(self.named_trainable())
        own.update({n: b for n, b in self.named_buffers() if is_trainable(n) and _persistent(self, n)})
        return own

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.named_trainable().values())

    def prompt_state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors (and the buffers of trainable modules), detached, keyed by full names."""
        return {n: p.detach().clone() for n, p in self._prompt_tensors().items()}

    def current_names(self, state: Mapping[str, Any], own: Sequence[str] | None = None) -> dict[str, Any]:
        """``state`` with keys written under the former container name (``prompt.*``, see
        :func:`legacy_name`) renamed to this learner's trainable names ``own`` (default: all of them)."""
        own = list(self.named_trainable() if own is None else own)
        former = {legacy_name(n): n for n in own}
        return {(former[k] if k not in own and k in former else k): v for k, v in state.items()}

    def load_prompt_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load prompts strictly: every trainable tensor, with its shape, and nothing else. Names written
        before the rename (``prompt.*``) are accepted."""
        own = self._prompt_tensors()
        state = self.current_names(state, list(own))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(n for n in set(own) & set(state) if tuple(own[n].shape) != tuple(state[n].shape))
        if missing or unexpected or wrong:
            details = [f"missing: {missing}"] if missing else []
            details += [f"unexpected: {unexpected}"] if unexpected else []
            details += [f"{n}: checkpoint {tuple(state[n].shape)} vs model {tuple(own[n].shape)}" for n in wrong]
            raise ValueError(f"prompt weights do not match the {self.method} learner: " + "; ".join(details))
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(state[n].to(p.dtype))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters())
        return f"method={self.method}, classes={self.num_classes}, trainable={n:,}"
