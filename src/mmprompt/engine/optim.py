"""SGD (or Adam) over the prompt parameters and Dassl's constant warm-up + cosine schedule.

With ``e`` the 0-based step of the schedule, ``W`` warm-up steps, ``T`` the total number of steps and
``m`` the floor ``optim.min_lr`` (0 by default)::

    lr(e) = warmup_lr                                              for e < W
    lr(e) = m + (base - m) * (1 + cos(pi * (e - W) / T)) / 2       for e >= W

A step is an epoch (``optim.schedule: epoch_cosine``, Dassl's recipe and the default) or an optimizer
step (``iter_cosine``: CLIP-LoRA's ``CosineAnnealingLR(T_max=total_iters, eta_min)`` stepped after every
iteration; with W = 0 the formula is that scheduler's closed form). With epochs, W = 1 and m = 0 this is
SPEC section 3 (MaPLe base-to-novel: 1e-5, 3.5e-3, 3.166e-3, 2.291e-3, 1.209e-3). Dassl's cosine
scheduler keeps counting from the step the warm-up ended and divides by the total number of steps, which is
why the last epoch does not reach the floor.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..config import SCHEDULES

__all__ = ["SCHEDULES", "SchedulePlan", "WarmupCosineLR", "build_optimizer", "lr_at", "schedule_plan"]



def lr_at(
    epoch: int, base_lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5, min_lr: float = 0.0
) -> float:
    """The learning rate of 0-based step ``epoch`` (an epoch, or an iteration under ``iter_cosine``) of a
    schedule of ``epochs`` steps, ``warmup_epochs`` of them at ``warmup_lr``, annealed down to ``min_lr``."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch < warmup_epochs:
        return warmup_lr
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs)) / 2


@dataclass(frozen=True)
class SchedulePlan:
    """How long a run trains and in which unit its cosine steps (see :func:`schedule_plan`)."""

    epochs: int
    """Passes over the training data (the last one cut short when ``total_steps`` ends inside it)."""
    total_steps: int
    """Optimizer steps (iterations) of the whole run."""
    steps_per_epoch: int
    per_iteration: bool
    """True: the scheduler steps after every optimizer step (``iter_cosine``); False: after every epoch."""
    schedule_steps: int
    """The scheduler's length ``T``: ``total_steps`` per iteration, ``epochs`` per epoch."""
    warmup_steps: int
    """The scheduler's warm-up ``W`` in its own unit (``warmup_epochs`` x ``steps_per_epoch`` per iteration)."""


def schedule_plan(optim: Any, shots: int, steps_per_epoch: int) -> SchedulePlan:
    """The run length and schedule of an ``optim`` config section with ``steps_per_epoch`` optimizer steps per
    pass: ``optim.epochs`` passes, or, when ``optim.epochs`` is null, ``optim.iterations`` (or
    ``optim.iterations_per_shot`` x ``shots``) optimizer steps, the data restarting (a new shuffled pass) as
    often as needed, as CLIP-LoRA's official loop does."""
    steps_per_epoch = max(1, int(steps_per_epoch))
    if optim.epochs is not None:
        epochs = int(optim.epochs)
        total = epochs * steps_per_epoch
    else:
        total = int(optim.iterations if optim.iterations is not None else optim.iterations_per_shot * shots)
        epochs = math.ceil(total / steps_per_epoch)
    if optim.schedule == "iter_cosine":
        return SchedulePlan(epochs, total, steps_per_epoch, True, total, optim.warmup_epochs * steps_per_epoch)
    return SchedulePlan(epochs, total, steps_per_epoch, False, epochs, optim.warmup_epochs)


ParamGroups = Sequence[tuple[Sequence[nn.Parameter], float] | tuple[Sequence[nn.Parameter], float, float]]


def build_optimizer(
    params: Iterable[nn.Parameter] | ParamGroups,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
) -> Optimizer:
    """Plain SGD (no Nesterov, no dampening), or with ``optimizer="adam"`` torch Adam (weight decay added
    to the gradient, no AMSGrad, as Dassl's; ``momentum`` unused), or ``"adamw"`` (decoupled weight decay,
    Dassl's AdamW), over the learner's trainable parameters.

    ``params`` is a list of parameters (one group at ``lr``) or of (parameters, multiplier) groups, each
    at ``lr * multiplier`` (the schedule then anneals every group from its own rate), or (parameters,
    multiplier, weight decay) groups whose decay replaces ``weight_decay`` for that group.
    """
    items = list(params)
    groups = items if items and isinstance(items[0], tuple) else [(items, 1.0)]
    bad = [len(g) for g in groups if len(g) not in (2, 3)]
    if bad:
        raise ValueError(f"a parameter group is (parameters, lr multiplier[, weight decay]); got a tuple of {bad[0]}")
    flat = [p for group, *_ in groups for p in group]
    if not flat:
        raise ValueError("no trainable parameters: nothing to optimise (zero-shot methods need no training)")
    frozen = [p for p in flat if not p.requires_grad]
    if frozen:
        raise ValueError(f"{len(frozen)} of the parameters given to the optimizer do not require gradients")
    if len({id(p) for p in flat}) != len(flat):
        raise ValueError("a parameter appears in more than one parameter group")
    param_groups = []
    for group, mult, *decay in groups:
        if list(group):
            param_groups.append({"params": list(group), "lr": lr * float(mult)})
            if decay:
                param_groups[-1]["weight_decay"] = float(decay[0])
    if optimizer == "adamw":  # decoupled weight decay: Dassl's AdamW (MMRL), CLIP-LoRA's own
        return AdamW(param_groups, lr=lr, betas=tuple(adam_betas), eps=adam_eps, weight_decay=weight_decay)
    if optimizer == "adam":
        return Adam(param_groups, lr=lr, betas=tuple(adam_betas), eps=adam_eps, weight_decay=weight_decay)
    if optimizer != "sgd":
        raise ValueError(f"unknown optimizer {optimizer!r}; known: sgd, adam, adamw")
    return SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False, dampening=0.0)


class WarmupCosineLR(LRScheduler):
    """Constant warm-up then cosine annealing, in closed form; call :meth:`step` once per epoch (or once per
    optimizer step for a per-iteration schedule: ``epochs`` and ``warmup_epochs`` then count iterations).

    After ``k`` calls to :meth:`step` the optimizer's rate is ``lr_at(k, ...)`` with ``base`` the
    optimizer's initial rate. The state (``last_epoch``) is saved by :meth:`state_dict`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        epochs: int,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        last_epoch: int = -1,
        min_lr: float = 0.0,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def lr_for(self, epoch: int) -> list[float]:
        """The rate of every parameter group at 0-based step ``epoch``."""
        return [lr_at(epoch, base, self.epochs, self.warmup_epochs, self.warmup_lr, self.min_lr)
                for base in self.base_lrs]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self.lr_for(max(self.last_epoch, 0))

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def set_lr(optimizer: Optimizer, lrs: list[float]) -> None:
    """Write rates into the optimizer's parameter groups (used when restoring a state)."""
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr if not isinstance(group["lr"], torch.Tensor) else torch.tensor(lr)


_SCHEDULE_SETTINGS = ("base_lrs", "epochs", "warmup_epochs", "warmup_lr", "min_lr")


def optimizer_settings(optimizer: Optimizer, scheduler: WarmupCosineLR) -> dict[str, Any]:
    """The hyperparameters of a freshly built optimizer and schedule (rates, momentum, weight decay, betas,
    the schedule's base rates and lengths), to be put back by :func:`restore_settings`."""
    return {"groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
            "schedule": {k: copy.deepcopy(getattr(scheduler, k)) for k in _SCHEDULE_SETTINGS}}


def restore_settings(optimizer: Optimizer, scheduler: WarmupCosineLR, settings: dict[str, Any]) -> None:
    """After loading a saved optimizer and scheduler: put back the hyperparameters of ``settings`` (from the
    new config), keeping the saved state (momentum buffers, Adam moments, the epoch count), and set the rate
    of the current epoch under the new schedule."""
    for group, fresh in zip(optimizer.param_groups, settings["groups"], strict=True):
        group.update(fresh)
    for key, value in settings["schedule"].items():
        setattr(scheduler, key, value)
    lrs = scheduler.get_lr()
    set_lr(optimizer, lrs)
    scheduler._last_lr = list(lrs)  # what get_last_lr() reports
