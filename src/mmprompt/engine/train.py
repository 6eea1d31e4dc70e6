"""The training loop: SGD over the prompts, warm-up + cosine per epoch, mixed precision, accumulation,
data parallelism, logging, a training state after every epoch, exact resumption, and a stop on NaN.

:func:`train` trains a :class:`~mmprompt.methods.PromptLearner` in place. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..methods import PromptLearner
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
from .loader import ImageDataset, train_loader
from .logs import truncate_run_logs
from .optim import WarmupCosineLR, build_optimizer

__all__ = ["NonFiniteLossError", "TrainResult", "autocast_context", "train"]

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
TB_DIR = "tb"
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good training state was kept."""

    def __init__(self, epoch: int, step: int, value: float, checkpoint: Path | None) -> None:
        kept = f"the last good training state is {checkpoint}" if checkpoint else "no training state was written yet"
        super().__init__(
            f"the training loss is {value} at epoch {epoch + 1} (0-based {epoch}), step {step + 1} of that epoch; "
            f"training stopped and {kept}. Try a lower optim.lr, precision=fp32 or bf16, or check the data."
        )
        self.epoch, self.step, self.value, self.checkpoint = epoch, step, value, checkpoint


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
    """One entry per epoch run in this session: epoch, lr, loss, acc, seconds."""
    seconds: float = 0.0


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16 / fp16, a no-op context for fp32."""
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Logger:
    """log.jsonl lines and TensorBoard scalars (rank 0 only; a no-op elsewhere)."""

    def __init__(self, run_dir: Path | None, tensorboard: bool) -> None:
        self.file = None
        self.tb = None
        if run_dir is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                logger.warning("tensorboard is not installed; writing log.jsonl only")
            else:
                self.tb = SummaryWriter(log_dir=str(run_dir / TB_DIR))

    def write(self, record: dict[str, Any], step: int, prefix: str) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("epoch", "step", "event") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _micro_batches(loader: Any) -> Iterator[tuple[int, Any]]:
    for step, batch in enumerate(loader):
        if batch is not None:
            yield step, batch


def train(
    learner: PromptLearner,
    samples: Sequence[Any],
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    image_dir: str | Path | None = None,
    ctx: DistContext | None = None,
    resume: bool = True,
    stop_after_epochs: int | None = None,
    on_epoch_end: Callable[[int, TrainResult], None] | None = None,
    progress: bool | None = None,
    allow_config_change: bool = False,
) -> TrainResult:
    """Train ``learner``'s prompts on ``samples`` with ``cfg.optim`` and ``cfg.precision``.

    Args:
        learner: the prompt learner, already on its device; trained in place.
        samples: training samples (``path``, ``label``); paths relative to ``image_dir`` unless absolute.
        cfg: the run config (``optim``, ``precision``, ``data.seed``, ``data.num_workers``, ``log``).
        run_dir: where ``log.jsonl``, ``tb/`` and ``checkpoint/state.pt`` go (None: write nothing).
        ctx: the data-parallel context (default: one process on the learner's device).
        resume: continue from ``run_dir``'s training state when there is one.
        stop_after_epochs: end this session after this many epochs (the state allows resuming).
        on_epoch_end: called with (0-based epoch, result so far) after each epoch's state is written.
        progress: show a progress bar (default ``cfg.log.progress``; rank 0 only).
        allow_config_change: resume although settings that change results differ (recorded in the log).

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the last good state (previous epoch) is kept.
    """
    device = next(learner.parameters()).device
    ctx = ctx or DistContext(device=device)
    params = learner.trainable_parameters()
    if not params:
        raise ValueError(f"{learner.method} has no trainable parameters; evaluate it without training")
    opt_cfg = cfg.optim
    run_path = Path(run_dir) if run_dir is not None else None
    state_file = state_path(run_path) if run_path is not None else None
    if run_path is not None and ctx.is_main:  # issue 15: no duplicate log records after a resume
        truncate_run_logs(run_path, state_file if resume else None, cfg.log.tensorboard)
    writer = _Logger(run_path if ctx.is_main else None, cfg.log.tensorboard)
    show = (cfg.log.progress if progress is None else progress) and ctx.is_main

    transform = _train_transform(learner, cfg.data.crop_scale_min)
    dataset = ImageDataset(samples, transform, image_dir, skip_corrupt=cfg.data.skip_corrupt)
    loader, sampler = train_loader(
        dataset, opt_cfg.batch_size, cfg.data.seed, cfg.data.num_workers, ctx.rank, ctx.world_size,
        pin_memory=device.type == "cuda",
    )
    optimizer = build_optimizer(params, opt_cfg.lr, opt_cfg.momentum, opt_cfg.weight_decay)
    scheduler = WarmupCosineLR(optimizer, opt_cfg.epochs, opt_cfg.warmup_epochs, opt_cfg.warmup_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    values = resume_values(cfg, samples)  # issue 15: resume rules
    key = config_fingerprint(values)
    changes: list[dict[str, Any]] = []

    start = 0
    if resume and state_file is not None and state_file.is_file():
        state = load_state(state_file, map_location=device)
        changes = [*state.get("config_changes", []),
                   *[{**c, "epoch": int(state["epoch"])} for c in check_resume(state, values, allow_config_change,
                                                                               state_file)]]
        learner.load_prompt_state_dict(state["prompts"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        start = int(state["epoch"])
        logger.info("resuming from %s after epoch %d of %d", state_file, start, opt_cfg.epochs)
        if len(changes) > len(state.get("config_changes", [])):
            writer.write({"event": "config_change", "epoch": start, "changes": changes}, 0, "resume")

    model: nn.Module = learner
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (class-name embeddings) are the same on every process: no need to sync them per forward.
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        model = DistributedDataParallel(
            learner, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
        )

    result = TrainResult(epochs_done=start, epochs_total=opt_cfg.epochs, completed=start >= opt_cfg.epochs,
                         resumed_from=start)
    begin = time.perf_counter()
    steps_per_epoch = max(1, math.ceil(len(sampler) / opt_cfg.grad_accum))
    try:
        for epoch in range(start, opt_cfg.epochs):
            if stop_after_epochs is not None and epoch - start >= stop_after_epochs:
                break
            record = _run_epoch(
                model, learner, loader, sampler, optimizer, scaler, cfg, ctx, epoch, steps_per_epoch, writer,
                show, state_file,
            )
            scheduler.step()
            result.epochs_done = epoch + 1
            result.history.append(record)
            if state_file is not None and ctx.is_main:
                save_state(state_file, {
                    "epoch": epoch + 1,
                    "fingerprint": key,
                    "resume_values": values, "record": record, "config_changes": changes,
                    "prompts": learner.prompt_state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": capture_rng(),
                })
            writer.write({"event": "epoch", **record}, (epoch + 1) * steps_per_epoch, "epoch")
            logger.info("epoch %d/%d: loss %.4f, acc %.2f%%, lr %.3g (%.1fs)", epoch + 1, opt_cfg.epochs,
                        record["loss"], record["acc"], record["lr"], record["seconds"])
            if ctx.enabled:
                torch.distributed.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch, result)
    finally:
        writer.close()
    result.completed = result.epochs_done >= opt_cfg.epochs
    result.seconds = time.perf_counter() - begin
    learner.eval()
    return result


def _train_transform(learner: PromptLearner, crop_scale_min: float = 0.08) -> Callable[..., torch.Tensor]:
    from ..clip.transforms import TrainTransform

    c = learner.clip.config
    return TrainTransform(size=c.vision.image_size, mean=tuple(c.mean), std=tuple(c.std), scale=(crop_scale_min, 1.0))


def _run_epoch(
    model: nn.Module,
    learner: PromptLearner,
    loader: Any,
    sampler: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: RunConfig,
    ctx: DistContext,
    epoch: int,
    steps_per_epoch: int,
    writer: _Logger,
    show: bool,
    state_file: Path | None,
) -> dict[str, float]:
    from tqdm import tqdm

    device = ctx.device if ctx.enabled else next(learner.parameters()).device
    accum = cfg.optim.grad_accum
    sampler.set_epoch(epoch)
    learner.train()
    lr = optimizer.param_groups[0]["lr"]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    t0 = time.perf_counter()
    n_micro = len(sampler)
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=n_micro, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not show, leave=False,
               dynamic_ncols=True)
    try:
        for micro, batch in _micro_batches(loader):
            images = batch.images.to(device, non_blocking=True)
            labels = batch.labels.to(device, non_blocking=True)
            last_of_step = (micro + 1) % accum == 0 or micro + 1 == n_micro
            sync = contextlib.nullcontext() if (last_of_step or not ctx.enabled) else model.no_sync()
            with sync:
                with autocast_context(cfg.precision, device):
                    logits = model(images)
                loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
                # Normalised by the global batch: DDP's gradient average over processes then equals the
                # gradient of the global batch's mean loss, however the batch was split.
                loss = loss_sum * (ctx.world_size / (batch.global_size * accum))
                _check_finite(loss_sum.detach(), ctx, epoch, micro, state_file)
                scaler.scale(loss).backward()
            if last_of_step:
                if cfg.optim.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(learner.trainable_parameters(), cfg.optim.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                correct = (logits.argmax(dim=-1) == labels).sum()
                totals += torch.stack([loss_sum.detach().double(), correct.double(),
                                       torch.tensor(float(labels.numel()), device=device, dtype=torch.float64)])
            bar.update(1)
            step_in_epoch = micro // accum
            if last_of_step and (step_in_epoch + 1) % cfg.log.every == 0:
                n = float(labels.numel())
                rec = {"event": "step", "epoch": epoch + 1, "step": step_in_epoch + 1, "lr": lr,
                       "loss": float(loss_sum.detach()) / n, "acc": 100.0 * float(correct) / n}
                writer.write(rec, epoch * steps_per_epoch + step_in_epoch + 1, "train")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
    finally:
        bar.close()
    all_reduce_sum(totals, ctx)
    count = max(float(totals[2]), 1.0)
    return {"epoch": epoch + 1, "lr": lr, "loss": float(totals[0]) / count, "acc": 100.0 * float(totals[1]) / count,
            "seconds": time.perf_counter() - t0}


def _check_finite(loss_sum: torch.Tensor, ctx: DistContext, epoch: int, step: int, state_file: Path | None) -> None:
    bad = (~torch.isfinite(loss_sum)).to(torch.float32).reshape(1)
    if ctx.enabled:  # every process must stop together, or the others wait forever in backward
        all_reduce_sum(bad, ctx)
    if bool(bad.item()):
        kept = state_file if state_file is not None and state_file.is_file() else None
        raise NonFiniteLossError(epoch, step, float(loss_sum), kept)
