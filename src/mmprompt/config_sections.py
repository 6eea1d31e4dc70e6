"""The sections of a run configuration: one dataclass per concern (``method``, ``data``, ``optim``,
``clip``, ``teacher``, ``log``), each checking its own fields when built.

:class:`~mmprompt.config.RunConfig` holds them; :mod:`mmprompt.config` reads them from YAML presets and
dotted overrides (and re-exports every name here).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checks import ConfigError, check_int, check_number, is_number

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "SUBSAMPLES",
    "ClipSection",
    "DataSection",
    "LogSection",
    "MethodSection",
    "OptimSection",
    "TeacherSection",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
SUBSAMPLES: tuple[str, ...] = ("all", "base", "new")


# ----------------------------------------------------------------------------------------------- sections
@dataclass
class MethodSection:
    """Which prompt learner to train and its options (the fields of that method's config class)."""

    name: str = "maple"
    """Method name: zeroshot, coop, cocoop, vpt, language_only, ivlp or maple (aliases accepted)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method options, e.g. ``n_ctx``, ``depth``, ``ctx_init``; written flat beside ``name`` in YAML."""

    def __post_init__(self) -> None:
        from .methods import canonical_method, make_config

        try:
            self.name = canonical_method(self.name)
        except KeyError as exc:
            raise ConfigError(f"method.name: {exc.args[0]}") from None
        try:
            make_config(self.name, self.options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"method: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodSection:
        d = dict(d)
        name = d.pop("name", "maple")
        return cls(name=name, options=d)


@dataclass
class DataSection:
    """Which dataset, which shots and classes, and how images are loaded."""

    dataset: str | None = None
    """Dataset key (``eurosat``, ``imagenet``...); set per run by the command or the protocol."""
    root: str | None = None
    """Data root holding one folder per dataset in the official layout."""
    shots: int = 16
    """Training images per class (few-shot sampling); 0 or less keeps every image."""
    seed: int = 1
    """Seed of the few-shot selection and of the run (prompt initialisation, data order, augmentation)."""
    subsample: str = "all"
    """Classes to train on: ``all``, ``base`` (first half of the sorted labels) or ``new``."""
    num_workers: int | None = None
    """DataLoader worker processes (0: load in the main process; None: what the machine has, see
    :func:`mmprompt.engine.loader.default_workers`)."""
    skip_corrupt: bool = False
    """Skip unreadable images (listed, and recorded in metrics.json) instead of stopping with an error."""
    classnames_file: str | None = None
    """Custom datasets: a class-names file (label order and names), e.g. for a CSV with integer labels."""
    split_file: str | None = None
    """Custom datasets: a split file in CoOp's format (paths relative to the dataset folder)."""
    descriptions: str | None = None
    """Class descriptions for the methods that read them (MMA++'s cupl prompts): a JSON file (class name ->
    list of sentences), or a folder with one ``<dataset>.json`` per dataset (see :mod:`mmprompt.descriptions`)."""
    crop_scale_min: float = 0.08
    """Smallest area fraction of the training RandomResizedCrop (the recipe's 0.08; the scale's upper end is 1)."""

    def __post_init__(self) -> None:
        self.crop_scale_min = check_number("data.crop_scale_min", self.crop_scale_min, above=0, maximum=1)
        if self.subsample not in SUBSAMPLES:
            raise ConfigError(f"data.subsample must be one of {SUBSAMPLES}, got {self.subsample!r}")
        if self.num_workers is not None:
            check_int("data.num_workers", self.num_workers, minimum=0)
        check_int("data.shots", self.shots)
        check_int("data.seed", self.seed)


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("epoch_cosine", "iter_cosine")
"""``optim.schedule``: the cosine steps once per epoch (Dassl) or once per optimizer step (CLIP-LoRA)."""


@dataclass
class OptimSection:
    """SGD (or Adam) with a constant warm-up and a cosine schedule, per epoch (Dassl's defaults) or per
    iteration (``schedule: iter_cosine``), over ``epochs`` passes or a number of ``iterations``."""

    lr: float = 0.0035
    """Base learning rate (after warm-up)."""
    optimizer: str = "sgd"
    """``sgd`` (Dassl's default), ``adam`` (torch Adam, weight decay as L2 on the gradient, as Dassl's) or
    ``adamw`` (torch AdamW, decoupled weight decay: MMRL, CLIP-LoRA)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas (Dassl's ADAM_BETA1 / ADAM_BETA2)."""
    adam_eps: float = 1e-8
    """Adam's eps (TCP's README edits Dassl's 1e-8 to 1e-3)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    """Applies to the prompt parameters."""
    epochs: int | None = 5
    """Total epochs, warm-up included; null: the run's length is ``iterations`` (or ``iterations_per_shot``)."""
    warmup_epochs: int = 1
    """Epochs at the constant warm-up rate (0: none)."""
    warmup_lr: float = 1e-5
    """Constant learning rate during warm-up."""
    batch_size: int = 4
    """Global training batch per optimizer step and accumulation micro-step (split over processes)."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed before one optimizer step (effective batch x this)."""
    max_grad_norm: float | None = None
    """Clip the gradient norm to this value (None: no clipping, as in the official code)."""
    schedule: str = "epoch_cosine"
    """``epoch_cosine``: the rate changes once per epoch (Dassl); ``iter_cosine``: after every optimizer step,
    as torch's ``CosineAnnealingLR(T_max=total iterations, eta_min=min_lr)`` stepped per iteration (CLIP-LoRA);
    a warm-up then lasts ``warmup_epochs`` x the steps of an epoch."""
    min_lr: float = 0.0
    """The floor the cosine anneals to (``eta_min``; Dassl's 0, CLIP-LoRA's 1e-6)."""
    iterations: int | None = None
    """With ``epochs: null``: train for this many optimizer steps, restarting the shuffled data as often as needed."""
    iterations_per_shot: int | None = None
    """With ``epochs: null``: train for this many optimizer steps per shot (``500`` x ``data.shots``: CLIP-LoRA)."""

    def __post_init__(self) -> None:
        self.lr = check_number("optim.lr", self.lr, above=0)
        self.warmup_lr = check_number("optim.warmup_lr", self.warmup_lr, above=0)
        self.momentum = check_number("optim.momentum", self.momentum, minimum=0)
        self.weight_decay = check_number("optim.weight_decay", self.weight_decay, minimum=0)
        if self.epochs is not None:
            check_int("optim.epochs", self.epochs, minimum=1)  # null: the run length is optim.iterations
        check_int("optim.warmup_epochs", self.warmup_epochs, minimum=0)
        check_int("optim.batch_size", self.batch_size, minimum=1)
        check_int("optim.grad_accum", self.grad_accum, minimum=1)
        self._check_length()
        if self.epochs is not None and self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ConfigError(
                f"optim.warmup_epochs ({self.warmup_epochs}) must be smaller than optim.epochs ({self.epochs})"
            )
        if self.max_grad_norm is not None:
            self.max_grad_norm = check_number("optim.max_grad_norm (or null)", self.max_grad_norm, above=0)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.adam_eps = check_number("optim.adam_eps", self.adam_eps, above=0)
        betas = self.adam_betas
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(is_number(b) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"optim.adam_betas must be two numbers in [0, 1), got {betas!r}")
        self.adam_betas = (float(betas[0]), float(betas[1]))

    def _check_length(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self.min_lr = check_number("optim.min_lr", self.min_lr, minimum=0)
        for name in ("iterations", "iterations_per_shot"):
            if getattr(self, name) is not None:
                check_int(f"optim.{name} (or null)", getattr(self, name), minimum=1)
        if self.iterations is not None and self.iterations_per_shot is not None:
            raise ConfigError("optim.iterations and optim.iterations_per_shot both set the run's length; set one "
                              "of them to null")
        if self.epochs is None and self.iterations is None and self.iterations_per_shot is None:
            raise ConfigError("optim.epochs is null, so optim.iterations or optim.iterations_per_shot must give the "
                              "run's length (a number of optimizer steps)")


@dataclass
class ClipSection:
    """Which CLIP weights to build the learner on."""

    weights: str = "ViT-B/16"
    """A registry name (``ViT-B/16``) or a path to a checkpoint file or folder."""
    activation: str | None = None
    """MLP activation for files that do not say it (``quick_gelu`` for OpenAI weights, ``gelu``)."""
    config: str | None = None
    """For bare weights without their config: the path of their ``config.json`` / ``open_clip_config.json``
    (``load(config=...)``, ``--clip-config``)."""
    architecture: str | None = None
    """For bare weights: a named architecture giving every field (``load(architecture=...)``, ``--clip-arch``)."""

    def __post_init__(self) -> None:
        if self.activation not in (None, "quick_gelu", "gelu"):
            raise ConfigError(f"clip.activation must be quick_gelu, gelu or null, got {self.activation!r}")
        for name in ("config", "architecture"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"clip.{name} must be a non-empty string or null, got {value!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError(f"clip.weights must name weights or a path, got {self.weights!r}")


@dataclass
class TeacherSection:
    """The frozen teacher of a method that distils from one (``needs_teacher``, e.g. PromptKD)."""

    path: str | None = None
    """An mmprompt run folder or prompt checkpoint (it records its method, CLIP and prompts), or an official
    teacher checkpoint (a Dassl ``model-best.pth.tar`` / ``model.pth.tar-N`` or its run folder). ``{dataset}``
    is replaced by the dataset key (one teacher per dataset in a sweep)."""
    clip: str = "ViT-L/14"
    """The teacher's CLIP for an official checkpoint (an mmprompt run records its own)."""
    activation: str | None = None
    """MLP activation of that CLIP file when it does not say it."""

    def __post_init__(self) -> None:
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ConfigError(f"teacher.path must be a path or null, got {self.path!r}")
        if not isinstance(self.clip, str) or not self.clip:
            raise ConfigError(f"teacher.clip must name CLIP weights or a path, got {self.clip!r}")
        if self.activation not in (None, "quick_gelu", "gelu"):
            raise ConfigError(f"teacher.activation must be quick_gelu, gelu or null, got {self.activation!r}")


@dataclass
class LogSection:
    """What a run writes besides its results."""

    every: int = 10
    """Write a training line to log.jsonl every this many optimizer steps (and at each epoch's end)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars under ``tb/``."""
    progress: bool = True
    """Show a tqdm progress bar (main process only)."""

    def __post_init__(self) -> None:
        check_int("log.every", self.every, minimum=1)
