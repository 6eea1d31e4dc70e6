"""The gradient half of a training step, shared by the training loop, ``mmprompt parity`` and the benchmarks.

:func:`backward_objective` back-propagates one micro-batch's objective and accumulates each of its
grad-terms apart; :func:`finish_gradients` averages those over processes, undoes the fp16 loss scale and
lets the learner transform the gradients before the optimizer steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..methods import Objective, PromptLearner
from .distributed import DistContext, all_reduce_sum

__all__ = ["backward_objective", "finish_gradients"]


def backward_objective(
    objective: Objective,
    params: Sequence[nn.Parameter],
    weight: float,
    held: dict[str, list[Tensor | None]],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Back-propagate ``weight`` x the objective's total into ``p.grad``, and add each grad-term's gradient
    to ``held`` (per term, one entry per parameter of ``params``).

    ``weight`` makes the sum over the micro-batches of a step and (after DDP's average) over processes
    equal the objective of the whole global batch: ``world_size * local_batch / global_step_batch``.
    """
    scale = scaler.scale if scaler is not None else (lambda t: t)
    for name, term in objective.grad_terms.items():
        # torch.autograd.grad does not run DDP's reducer hooks: these gradients stay local until the step
        grads = torch.autograd.grad(scale(term * weight), list(params), retain_graph=True, allow_unused=True)
        slots = held.setdefault(name, [None] * len(params))
        for i, g in enumerate(grads):
            if g is not None:
                slots[i] = g.detach().clone() if slots[i] is None else slots[i] + g
    scale(objective.total * weight).backward()


def finish_gradients(
    learner: PromptLearner,
    held: dict[str, list[Tensor | None]],
    ctx: DistContext | None = None,
    scaler: torch.amp.GradScaler | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> bool:
    """Before the optimizer step: average the grad-terms over processes (as DDP did ``p.grad``), undo the
    fp16 loss scale on both, and let the learner transform the gradients. Returns True when the
    optimizer's gradients were unscaled here."""
    if not held:
        return False
    for grads in held.values():
        for g in grads:
            if g is not None and ctx is not None and ctx.enabled:
                all_reduce_sum(g, ctx).div_(ctx.world_size)
    unscaled = False
    if scaler is not None and scaler.is_enabled() and optimizer is not None:
        scaler.unscale_(optimizer)
        unscaled = True
        inv = 1.0 / float(scaler.get_scale())
        for grads in held.values():
            for g in grads:
                if g is not None:
                    g.mul_(inv)
    learner.transform_gradients(held)
    return unscaled
