"""What every prompt learner provides, and the pieces they share.

A prompt learner wraps a frozen :class:`~mmprompt.clip.model.CLIP` (``self.clip``) and keeps every
trainable tensor under ``self.prompt``. One predicate, :func:`is_trainable`, decides what trains, what
the optimizer gets and what a checkpoint saves.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..clip.model import CLIP, BlockAdapters, DeepPrompts
from ..clip.tokenizer import Tokenizer
from .contract import DatasetContext, EncoderOptions, Objective, cross_entropy_objective
from .teacher import Teacher

logger = logging.getLogger(__name__)

TRAINABLE_PREFIX = "prompt."


def is_trainable(name: str) -> bool:
    """The one predicate: a parameter trains (and is saved) iff it lives under ``prompt``."""
    return name.startswith(TRAINABLE_PREFIX)


@dataclasses.dataclass
class MethodConfig:
    """Options shared by every method (each method's config extends it)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_model(self, clip: CLIP) -> None:
        """Raise ValueError if the config does not fit this CLIP (e.g. a depth beyond its layers)."""

    def __post_init__(self) -> None:
        """Validate the fields (subclasses extend this)."""


def check_depth(what: str, depth: int, layers: int) -> None:
    if depth < 0:
        raise ValueError(f"{what} must be >= 0, got {depth}")
    if depth > layers:
        raise ValueError(f"{what} = {depth} is larger than the model's {layers} layers")


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
) -> int:
    """The number of leading positions of ``embeddings`` [N, L, D] that are equal in every row (of
    each of ``groups`` consecutive groups of rows) and precede every EOT (``eot`` [N]), cut before any
    deep prompt that would straddle them or differ per row (0 when the groups have fewer than 2 rows).

    Under the causal mask those positions have the same states in every prompt at every block, so
    the text encoder can compute them once (``shared_prefix`` of ``CLIP.encode_text_embeddings``).
    """
    n, _, width = embeddings.shape
    if groups < 1 or n % groups:
        raise ValueError(f"{n} prompts do not form {groups} groups of equal size")
    if n // groups < 2:
        return 0
    with torch.no_grad():
        limit = int(eot.min())
        head = embeddings[:, :limit].reshape(groups, n // groups, limit, width)
        same = (head == head[:, :1]).all(dim=3).all(dim=1).all(dim=0)  # [limit]
        p = limit if bool(same.all()) else int(same.to(torch.int8).argmin())
    for prompts in deep_prompts or ():  # the rule of Transformer.forward_last: inside as one set, or after
        if prompts is None:
            continue
        one_set = prompts.dim() == 2 or prompts.shape[0] == 1
        if not (one_set and prompt_start + prompts.shape[-2] <= p):
            p = min(p, max(prompt_start, 0))
    return p


class TeacherRequiredError(ValueError):
    """A learner with ``needs_teacher`` was built without a teacher."""


def _persistent(module: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    return leaf not in sub._non_persistent_buffers_set


def normal_init(*shape: int, std: float = 0.02) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


class PromptLearner(nn.Module):
    """Base class: a frozen CLIP, trainable modules under ``self.prompt``, logits and a training objective.

    Subclasses implement :meth:`build_prompts` (create ``self.prompt``), :meth:`prepare_classes` (the
    class-dependent, non-persistent buffers), :meth:`text_features` and, when vision prompts exist,
    :meth:`vision_prompts`. Everything else has a default that a method may override:

    * :meth:`objective` (images, labels) -> :class:`Objective`: the training loss and its named terms
      (default: cross-entropy of :meth:`train_logits`);
    * :meth:`logits` / :meth:`predict_logits`: evaluation logits, which may differ from the training ones;
    * :meth:`teacher_text_features` / :meth:`teacher_image_features`: the frozen CLIP without prompts;
    * :meth:`transform_gradients`: change gradients between backward and the optimizer step;
    * :meth:`on_epoch_end` with :meth:`training_state` / :meth:`load_training_state`: per-epoch logic
      whose state is resumed exactly;
    * :meth:`parameter_groups`: learning-rate multipliers per group of trainable parameters;
    * :meth:`block_adapters`: per-block residual adapters in either tower.
    """

    method: ClassVar[str] = ""
    image_conditioned_text: ClassVar[bool] = False
    """True when class text features depend on the image (CoCoOp): no caching across images."""
    class_specific: ClassVar[bool] = False
    """True when prompts are tied to the training class names (class-specific CoOp)."""

    # ----- teacher and transductive training (extension points; see docs/writing-a-method.md) --------
    needs_teacher: ClassVar[bool] = False
    """True when the learner distils from a frozen teacher (PromptKD): the engine then loads the teacher
    (``--teacher RUN_DIR_OR_CKPT``) and passes it as ``teacher=`` to the constructor, where it is
    ``self.teacher`` before :meth:`build_prompts` runs. The teacher is never saved with the student."""
    transductive: ClassVar[bool] = False
    """True when the learner trains on UNLABELLED images of the evaluation classes (PromptKD): the engine
    then trains on the full training split of every class of the dataset (no few-shot sampling) and
    gives :meth:`objective` a :class:`~mmprompt.methods.contract.NoLabels` object instead of labels."""

    @classmethod
    def official_teacher(cls, config: MethodConfig) -> tuple[str, dict[str, Any]]:
        """For a learner with ``needs_teacher``: the method and options of the teacher that the official
        code builds (what an official teacher checkpoint holds; ``mmprompt parity`` builds it the same way)."""
        raise NotImplementedError(f"{cls.method} names no official teacher design")

    def check_teacher(self, teacher: Teacher) -> None:
        """Raise :class:`~mmprompt.methods.teacher.TeacherMismatchError` when ``teacher`` does not fit this
        learner (default: nothing to check)."""

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
        self.prompt = nn.Module()
        self.build_prompts()
        for name, param in self.named_parameters():
            param.requires_grad_(is_trainable(name))
        self.classnames: list[str] = []
        self.last_text_shared_prefix = 0
        """The shared prefix length the last :meth:`encode_text` used (for benchmarks and logs)."""
        self.set_classnames(classnames, dataset=self.dataset)

    # ----- what subclasses provide -------------------------------------------------------------------
    def build_prompts(self) -> None:
        """Create the trainable parameters under ``self.prompt``."""

    def prepare_classes(self, classnames: list[str]) -> None:
        """Build the class-dependent buffers for ``classnames`` (already cleaned)."""
        raise NotImplementedError

    def text_features(self) -> Tensor:
        """Class text features [C, E], not normalised (methods whose text does not depend on the image)."""
        raise NotImplementedError

    def vision_prompts(self) -> tuple[Tensor | None, DeepPrompts | None]:
        """Prompts for the image encoder: (input prompts, per-block prompts)."""
        return None, None

    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """Config values that the shapes of saved trainable tensors fix (``import-official``)."""
        return {}

    @classmethod
    def classes_needed(cls, state: Mapping[str, Tensor], config: MethodConfig) -> int | None:
        """How many training class names saved tensors are tied to (None: they work with any names)."""
        return None

    # ----- shared machinery --------------------------------------------------------------------------
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

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if is_trainable(n)]

    def _prompt_tensors(self) -> dict[str, Tensor]:
        """The trainable parameters and the persistent buffers of trainable modules (e.g. a BatchNorm's
        running statistics under ``prompt``), by full name."""
        own: dict[str, Tensor] = {n: p for n, p in self.named_parameters() if is_trainable(n)}
        own.update({n: b for n, b in self.named_buffers() if is_trainable(n) and _persistent(self, n)})
        return own

    def prompt_state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors (and the buffers of trainable modules), detached, keyed by full names."""
        return {n: p.detach().clone() for n, p in self._prompt_tensors().items()}

    def load_prompt_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load prompts strictly: every trainable tensor, with its shape, and nothing else."""
        own = self._prompt_tensors()
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
        chunks = self.text_chunks(eot, embeddings.shape[1])
        groups = prefix_groups if chunks is None else 1  # chunks mix the groups' rows
        shared = 0
        if truncate and self.encoder.share_text_prefix:
            shared = shared_prefix_length(embeddings, eot, deep_prompts, prompt_start, groups)
            if shared == 0 and groups > 1:
                groups = 1
                shared = shared_prefix_length(embeddings, eot, deep_prompts, prompt_start)
        self.last_text_shared_prefix = shared

        adapters = self.block_adapters()[1]

        def run(x: Tensor, e: Tensor, *deep: Tensor | None) -> Tensor:
            return self.clip.encode_text_embeddings(
                x,
                e,
                deep_prompts=list(deep) if deep else None,
                prompt_start=prompt_start,
                truncate=truncate,
                shared_prefix=shared,
                prefix_groups=groups,
                adapters=adapters,
            )

        deep = tuple(deep_prompts) if deep_prompts is not None else ()
        if chunks is None:
            return run(embeddings, eot, *deep)
        checkpointed = torch.is_grad_enabled()
        outputs = []
        n = embeddings.shape[0]
        for idx in chunks:
            x, e = embeddings.index_select(0, idx), eot.index_select(0, idx)
            rows = tuple(p.index_select(0, idx) if p is not None and p.dim() == 3 and p.shape[0] == n > 1 else p
                         for p in deep)  # per-prompt deep prompts follow their rows
            if checkpointed:
                outputs.append(checkpoint(run, x, e, *rows, use_reentrant=False))
            else:
                outputs.append(run(x, e, *rows))
        order = torch.cat(chunks)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(outputs).index_select(0, inverse)

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
        for i, row in enumerate(order.tolist()):
            tokens += int(lengths[row])
            full = i - start + 1 > size if size > 0 else tokens > budget and i > start
            if full:
                bounds.append((start, i))
                start, tokens = i, int(lengths[row])
        bounds.append((start, n))
        order = order.to(eot.device)
        return [order[a:b] for a, b in bounds]

    def image_features(self, images: Tensor) -> Tensor:
        """Image features [B, E], not normalised, with this method's vision prompts and adapters."""
        prompts, deep = self.vision_prompts()
        adapters = self.block_adapters()[0]
        return self.clip.encode_image(images, prompts=prompts, deep_prompts=deep, adapters=adapters)

    def logit_scale(self) -> Tensor:
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

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        """The training objective on a batch (default: cross-entropy of :meth:`train_logits`)."""
        return cross_entropy_objective(self.train_logits(images), labels)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor | Objective:
        """Logits [B, C] for ``images``; with ``labels``, the training :class:`Objective` instead (so
        that the objective runs inside a DDP-wrapped forward)."""
        if labels is None:
            return self.logits(images)
        return self.objective(images, labels)

    # ----- frozen teachers (the CLIP without prompts) ----------------------------------------------
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

    # ----- hooks of the training loop --------------------------------------------------------------
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

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """Trainable parameters in groups with a learning-rate multiplier each (default: one group, 1.0).
        The warm-up rate is the same for every group; the multiplier scales the base rate."""
        return [(self.trainable_parameters(), 1.0)]

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """Named intermediate tensors of the evaluation forward, for checks against reference files
        (e.g. each head's logits). Default: none."""
        return {}

    def block_adapters(self) -> tuple[BlockAdapters | None, BlockAdapters | None]:
        """Residual adapters per block of the (vision, text) towers (see :class:`~mmprompt.clip.model.
        CLIP`). Default: none."""
        return None, None

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

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters())
        return f"method={self.method}, classes={self.num_classes}, trainable={n:,}"
