"""The training loop: SGD over the trainable parameters, warm-up + cosine per epoch or per iteration
(:func:`~.optim.schedule_plan`: a run is a number of epochs or of optimizer steps), mixed precision,
accumulation, data parallelism, logging, a training state after every epoch, exact resumption, a stop on
NaN.

The loop knows no method. Each step it asks the learner for its :class:`~mmprompt.methods.Objective`
(``model(images, labels)``, inside the DDP-wrapped forward), back-propagates the total, accumulates the
gradients of the objective's ``grad_terms`` apart, lets the learner transform the gradients, and steps.
After each epoch it calls the learner's ``on_epoch_end`` and saves the learner's training state with the
optimizer's. :func:`train` runs :func:`setup_training`, :func:`resume_training` and :func:`run_epoch`
around a :class:`TrainSession`; only rank 0 writes files. The gradient half of a step is in
:mod:`.gradients`, the log writer in :mod:`.logs`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..errors import CheckpointError, raise_if_out_of_memory
from ..methods import NoLabels, PromptLearner
from .checkpoint import (
    capture_rng,
    check_resume,
    config_fingerprint,
    load_state,
    restore_rng,
    resume_values,
    save_state,
    state_path,
)
from .distributed import DistContext, all_reduce_sum
from .gradients import backward_objective, finish_gradients
from .loader import ImageDataset, train_loader
from .logs import LOG_FILE as LOG_FILE  # with TB_DIR: re-exported, they were defined here
from .logs import TB_DIR as TB_DIR
from .logs import RunLogger, truncate_run_logs
from .optim import (
    SchedulePlan,
    WarmupCosineLR,
    build_optimizer,
    optimizer_settings,
    restore_settings,
    schedule_plan,
)
from .precision import autocast_context

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "TrainSession",
    "autocast_context",
    "backward_objective",
    "finish_gradients",
    "resume_training",
    "run_epoch",
    "setup_training",
    "train",
]

logger = logging.getLogger(__name__)

_Logger = RunLogger  # its name before it moved to .logs

class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good training state was kept."""

    def __init__(
        self, epoch: int, step: int, value: float, checkpoint: Path | None, term: str = "loss"
    ) -> None:
        kept = f"the last good training state is {checkpoint}" if checkpoint else "no training state was written yet"
        what = "the training loss" if term == "loss" else f"the loss term {term!r}"
        super().__init__(
            f"{what} is {value} at epoch {epoch + 1} (0-based {epoch}), step {step + 1} of that epoch; "
            f"training stopped and {kept}. Try a lower optim.lr, precision=fp32 or bf16, or check the data."
        )
        self.epoch, self.step, self.value, self.checkpoint, self.term = epoch, step, value, checkpoint, term


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    epochs_done: int
    """Epochs finished in total (including those of an earlier, resumed session)."""
    epochs_total: int
    completed: bool
    """True when every epoch has run (False when stopped by ``stop_after_epochs``)."""
    resumed_from: int = 0
    """Epochs already done when this session started."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry per epoch run in this session: epoch, lr, loss, each loss term, acc, seconds."""
    seconds: float = 0.0


@dataclass
class TrainSession:
    """Everything one training session holds between its steps."""

    learner: PromptLearner
    model: nn.Module
    """The learner, or its DDP wrapper."""
    cfg: RunConfig
    ctx: DistContext
    device: torch.device
    loader: Any
    sampler: Any
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosineLR
    scaler: torch.amp.GradScaler
    writer: _Logger
    show: bool
    state_file: Path | None
    fingerprint: str
    steps_per_epoch: int
    params: list[nn.Parameter]
    plan: SchedulePlan
    """The run's length in epochs and optimizer steps, and whether the schedule steps per iteration."""
    resume_values: dict[str, Any] = field(default_factory=dict)
    """The settings that change results (compared on resume, see :func:`~.checkpoint.check_resume`)."""
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    """Result-changing settings changed on an allowed resume, with the epoch at which they changed."""
    grad_terms: dict[str, list[Tensor | None]] = field(default_factory=dict)
    """Per objective grad-term, its gradient for each of ``params``, accumulated over the step."""


def _micro_batches(loader: Any) -> Iterator[tuple[int, Any]]:
    for step, batch in enumerate(loader):
        if batch is not None:
            yield step, batch


def _train_transform(learner: PromptLearner, crop_scale_min: float = 0.08) -> Callable[..., torch.Tensor]:
    from ..clip.transforms import transform_for

    return transform_for(learner.clip.config, train=True, scale=(crop_scale_min, 1.0))


def _wrap_ddp(learner: PromptLearner, ctx: DistContext, device: torch.device) -> nn.Module:
    if not ctx.enabled:
        return learner
    from torch.nn.parallel import DistributedDataParallel

    # Buffers (class-name embeddings) are the same on every process: no need to sync them per forward.
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def setup_training(
    learner: PromptLearner,
    samples: Sequence[Any],
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    image_dir: str | Path | None = None,
    ctx: DistContext | None = None,
    progress: bool | None = None,
    resume: bool = True,
) -> TrainSession:
    """Build the loader, optimizer (the learner's parameter groups), schedule and logger of a session.
    Logs of a run folder are cut back to its training state (``resume``) or emptied, so that a resumed run
    has no duplicate records."""
    device = next(learner.parameters()).device
    ctx = ctx or DistContext(device=device)
    params = learner.trainable_parameters()
    if not params:
        raise ValueError(f"{learner.method} has no trainable parameters; evaluate it without training")
    opt = cfg.optim
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None and ctx.is_main:
        truncate_run_logs(run_path, state_path(run_path) if resume else None, cfg.log.tensorboard)
    dataset = ImageDataset(samples, _train_transform(learner, cfg.data.crop_scale_min), image_dir,
                           skip_corrupt=cfg.data.skip_corrupt)
    loader, sampler = train_loader(dataset, opt.batch_size, cfg.data.seed, cfg.data.num_workers, ctx.rank,
                                   ctx.world_size, pin_memory=device.type == "cuda")
    groups = learner.parameter_groups()
    grouped = {id(p) for group, *_ in groups for p in group}
    if grouped != {id(p) for p in params}:
        raise ValueError(f"{learner.method}.parameter_groups() must hold every trainable parameter exactly once")
    optimizer = build_optimizer(groups, opt.lr, opt.momentum, opt.weight_decay, opt.optimizer, opt.adam_betas,
                                opt.adam_eps)
    values = resume_values(cfg, samples)
    steps_per_epoch = max(1, math.ceil(len(sampler) / opt.grad_accum))
    plan = schedule_plan(opt, cfg.data.shots, steps_per_epoch)
    if opt.epochs is not None and (opt.iterations is not None or opt.iterations_per_shot is not None):
        logger.warning("optim.epochs=%d sets the run's length: optim.iterations%s is not used (set optim.epochs=null "
                       "to train for a number of iterations)", opt.epochs,
                       "" if opt.iterations is not None else "_per_shot")
    teacher = getattr(learner, "teacher", None)
    if teacher is not None:  # another teacher file changes results: a resume with it is refused
        values["teacher.sha256"] = teacher.info.get("sha256")
    return TrainSession(
        learner=learner,
        model=_wrap_ddp(learner, ctx, device),
        cfg=cfg,
        ctx=ctx,
        device=ctx.device if ctx.enabled else device,
        loader=loader,
        sampler=sampler,
        optimizer=optimizer,
        scheduler=WarmupCosineLR(optimizer, plan.schedule_steps, plan.warmup_steps, opt.warmup_lr, min_lr=opt.min_lr),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        writer=_Logger(run_path if ctx.is_main else None, cfg.log.tensorboard),
        show=(cfg.log.progress if progress is None else progress) and ctx.is_main,
        state_file=state_path(run_path) if run_path is not None else None,
        fingerprint=config_fingerprint(values),
        steps_per_epoch=steps_per_epoch,
        params=params,
        plan=plan,
        resume_values=values,
    )


def resume_training(session: TrainSession, allow_config_change: bool = False) -> int:
    """Restore the session from its run folder's training state; returns the epochs already done.

    Settings that change results must be those of the saved state (the refusal lists each difference)
    unless ``allow_config_change``; then the changes are recorded in the log and the training state."""
    s = session
    if s.state_file is None or not s.state_file.is_file():
        return 0
    state = load_state(s.state_file, map_location=s.device)
    new = check_resume(state, s.resume_values, allow_config_change, s.state_file)
    earlier = list(state.get("config_changes", []))
    s.config_changes = [*earlier, *({**c, "epoch": int(state["epoch"])} for c in new)]
    try:  # names written before the trainable rename (``prompt.*``) load; other mismatches are refused
        s.learner.load_prompt_state_dict(state["prompts"])
        s.learner.load_training_state(state.get("method_state") or {})
    except ValueError as exc:
        raise CheckpointError(f"{s.state_file}: {exc}; delete {s.state_file.parent} to start over") from exc
    fresh = optimizer_settings(s.optimizer, s.scheduler)
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    start = int(state["epoch"])
    if new:  # allowed changes: the hyperparameters come from the new config, the buffers from the file; the
        # schedule continues from the steps done in its own unit (the change may be epochs <-> iterations)
        s.scheduler.last_epoch = min(start * s.steps_per_epoch, s.plan.total_steps) if s.plan.per_iteration else start
        restore_settings(s.optimizer, s.scheduler, fresh)
    s.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    logger.info("resuming from %s after epoch %d of %d", s.state_file, start, s.plan.epochs)
    if new:
        s.writer.write({"event": "config_change", "epoch": start, "changes": s.config_changes}, 0, "resume")
    return start


def save_training_state(session: TrainSession, epochs_done: int, record: dict[str, Any]) -> None:
    """Write the training state after ``epochs_done`` epochs (rank 0; atomically), with that epoch's
    record (so that a run resumed after its last epoch still reports its final loss)."""
    s = session
    if s.state_file is None or not s.ctx.is_main:
        return
    save_state(s.state_file, {
        "epoch": epochs_done,
        "fingerprint": s.fingerprint,
        "resume_values": s.resume_values,
        "record": record,
        "config_changes": s.config_changes,
        "prompts": s.learner.prompt_state_dict(),
        "method_state": {k: v.detach().clone() for k, v in s.learner.training_state().items()},
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict(),
        "rng": capture_rng(),
    })


def train(
    learner: PromptLearner,
    samples: Sequence[Any],
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    stop_after_epochs: int | None = None,
    on_epoch_end: Callable[[int, TrainResult], None] | None = None,
    allow_config_change: bool = False,
    **setup_options: Any,
) -> TrainResult:
    """Train ``learner``'s trainable parameters on ``samples`` with ``cfg.optim`` and ``cfg.precision``.

    Args:
        learner: the prompt learner, already on its device; trained in place.
        samples: training samples (``path``, ``label``); paths relative to ``image_dir`` unless absolute.
        cfg: the run config (``optim``, ``precision``, ``data.seed``, ``data.num_workers``, ``log``).
        run_dir: where ``log.jsonl``, ``tb/`` and ``checkpoint/state.pt`` go (None: write nothing).
        setup_options: the keyword options of :func:`setup_training`: ``image_dir``, ``ctx`` (default one
            process on the learner's device), ``progress`` (default ``cfg.log.progress``), ``resume``
            (continue from ``run_dir``'s training state when there is one; default true).
        stop_after_epochs: end this session after this many epochs (the state allows resuming).
        on_epoch_end: called with (0-based epoch, result so far) after each epoch's state is written.
        allow_config_change: resume although settings that change results differ (recorded in the log).

    Raises:
        NonFiniteLossError: a loss term became NaN/inf; the last good state (previous epoch) is kept.
    """
    session = setup_training(learner, samples, cfg, run_dir, **setup_options)
    epochs = session.plan.epochs
    start = resume_training(session, allow_config_change) if setup_options.get("resume", True) else 0
    result = TrainResult(epochs_done=start, epochs_total=epochs, completed=start >= epochs, resumed_from=start)
    begin = time.perf_counter()
    try:
        for epoch in range(start, epochs):
            if stop_after_epochs is not None and epoch - start >= stop_after_epochs:
                break
            try:
                record = run_epoch(session, epoch)
            except (MemoryError, RuntimeError) as exc:
                raise_if_out_of_memory(exc, f"training epoch {epoch + 1} with batches of {cfg.optim.batch_size} "
                                       f"images ({cfg.precision} on {session.device})", "optim.batch_size (--set "
                                       "optim.batch_size=N; optim.grad_accum=K keeps the effective batch)")
                raise
            if not session.plan.per_iteration:
                session.scheduler.step()
            learner.on_epoch_end(epoch, epochs)
            result.epochs_done = epoch + 1
            result.history.append(record)
            save_training_state(session, epoch + 1, record)
            session.writer.write({"event": "epoch", **record}, (epoch + 1) * session.steps_per_epoch, "epoch")
            terms = ", ".join(f"{k} {record[k]:.4f}" for k in record.get("terms", []))
            acc = "no labels" if record["acc"] is None else f"acc {record['acc']:.2f}%"
            logger.info("epoch %d/%d: loss %.4f%s, %s, lr %.3g (%.1fs)", epoch + 1, epochs, record["loss"],
                        f" ({terms})" if terms else "", acc, record["lr"], record["seconds"])
            if session.ctx.enabled:
                torch.distributed.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch, result)
    finally:
        session.writer.close()
    result.completed = result.epochs_done >= epochs
    result.seconds = time.perf_counter() - begin
    learner.eval()
    return result


def optimizer_step(session: TrainSession) -> None:
    """Finish the gradients (grad-terms, the learner's transform), clip, step, and clear them."""
    s = session
    unscaled = finish_gradients(s.learner, s.grad_terms, s.ctx, s.scaler, s.optimizer)
    if s.cfg.optim.max_grad_norm is not None:
        if not unscaled:
            s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.params, s.cfg.optim.max_grad_norm)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.grad_terms = {}
    if s.plan.per_iteration:
        s.scheduler.step()


def run_epoch(session: TrainSession, epoch: int) -> dict[str, Any]:
    """One epoch (cut short where the run's last optimizer step falls inside it); returns its record (epoch,
    lr at its start, loss, every term, acc, seconds), reduced over processes."""
    from tqdm import tqdm

    s = session
    cfg, ctx, device = s.cfg, s.ctx, s.device
    accum = cfg.optim.grad_accum
    s.sampler.set_epoch(epoch)
    s.learner.train()
    unlabelled = s.learner.transductive
    lr = s.optimizer.param_groups[0]["lr"]
    names: list[str] = []
    totals: Tensor | None = None  # per name (terms, then loss): sum of value x batch; then correct, count
    t0 = time.perf_counter()
    n_micro = len(s.sampler)
    steps = min(s.steps_per_epoch, s.plan.total_steps - epoch * s.steps_per_epoch)  # fewer in a cut last epoch
    s.optimizer.zero_grad(set_to_none=True)
    s.grad_terms = {}
    bar = tqdm(total=min(n_micro, steps * accum), desc=f"epoch {epoch + 1}/{s.plan.epochs}", disable=not s.show,
               leave=False, dynamic_ncols=True)
    try:
        for micro, batch in _micro_batches(s.loader):
            images = batch.images.to(device, non_blocking=True)
            n = images.shape[0]
            # a transductive learner trains on images only: its objective gets an object that refuses any use
            labels = NoLabels(n) if unlabelled else batch.labels.to(device, non_blocking=True)
            last_of_step = (micro + 1) % accum == 0 or micro + 1 == n_micro
            sync = contextlib.nullcontext() if (last_of_step or not ctx.enabled) else s.model.no_sync()
            with sync:
                with autocast_context(cfg.precision, device):
                    objective = s.model(images, labels)
                values = {k: v.detach().float() for k, v in objective.values().items()}
                _check_finite(values, ctx, epoch, micro, s.state_file)
                # Normalised by the global batch: DDP's gradient average over processes then equals the
                # gradient of the global batch's mean objective, however the batch was split.
                weight = ctx.world_size * n / (batch.global_size * accum)
                backward_objective(objective, s.params, weight, s.grad_terms, s.scaler)
            step_lr = s.optimizer.param_groups[0]["lr"]  # the rate of this step (per iteration, it changes)
            if last_of_step:
                optimizer_step(s)
            with torch.no_grad():
                if totals is None:
                    names = [k for k in values if k != "loss"] + ["loss"]
                    totals = torch.zeros(len(names) + 2, dtype=torch.float64, device=device)
                logits = objective.logits
                correct = (logits.argmax(dim=-1) == labels).sum().double() if logits is not None and not unlabelled \
                    else 0.0
                row = [values[k].double() * n for k in names]
                totals += torch.stack([*row, torch.as_tensor(correct, dtype=torch.float64, device=device),
                                       torch.tensor(float(n), dtype=torch.float64, device=device)])
            bar.update(1)
            step_in_epoch = micro // accum
            if last_of_step and (step_in_epoch + 1) % cfg.log.every == 0:
                rec = {"event": "step", "epoch": epoch + 1, "step": step_in_epoch + 1, "lr": step_lr,
                       **{k: float(values[k]) for k in names},
                       "acc": None if unlabelled else 100.0 * float(correct) / n}
                s.writer.write(rec, epoch * s.steps_per_epoch + step_in_epoch + 1, "train")
                bar.set_postfix({k: f"{rec[k]:.4f}" for k in names} | {"lr": f"{step_lr:.2e}"})
            if steps < s.steps_per_epoch and last_of_step and step_in_epoch + 1 >= steps:
                break  # the run's last optimizer step, inside this pass
    finally:
        bar.close()
    if totals is None:  # no batch at all on this process
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        names = ["loss"]
    all_reduce_sum(totals, ctx)
    count = max(float(totals[-1]), 1.0)
    means = {k: float(totals[i]) / count for i, k in enumerate(names)}
    acc = None if unlabelled else 100.0 * float(totals[-2]) / count  # no labels: no training accuracy
    return {"epoch": epoch + 1, "lr": lr, **means, "acc": acc,
            "terms": [k for k in names if k != "loss"], "seconds": time.perf_counter() - t0}


def _check_finite(
    values: dict[str, Tensor], ctx: DistContext, epoch: int, step: int, state_file: Path | None
) -> None:
    names = ["loss", *(k for k in values if k != "loss")]  # the total first: it names the usual case
    stacked = torch.stack([values[k].reshape(()) for k in names])
    bad = (~torch.isfinite(stacked)).to(torch.float32)
    if ctx.enabled:  # every process must stop together, or the others wait forever in backward
        all_reduce_sum(bad, ctx)
    if bool(bad.any().item()):
        first = int(bad.nonzero()[0].item())
        kept = state_file if state_file is not None and state_file.is_file() else None
        raise NonFiniteLossError(epoch, step, float(stacked[first]), kept, names[first])
