"""The timed part of ``mmprompt speed``: training steps and evaluation of one learner on one path, in this
process (:func:`~.core.measure_path` builds the learner and calls these).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..engine.gradients import backward_objective, finish_gradients
from ..methods.base import PromptLearner
from .system import PeakMemory

if TYPE_CHECKING:
    from .core import BenchSettings, PathResult

__all__ = ["Probe", "measure_eval", "measure_train", "sync"]

logger = logging.getLogger(__name__)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Probe:
    """One path's learner under measurement, and where its figures go."""

    settings: BenchSettings
    learner: PromptLearner
    autocast: Callable[[], Any]
    memory: PeakMemory
    result: PathResult

    def random_images(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` random images at the model's resolution, on the measured device."""
        size = self.learner.clip.config.vision.image_size
        return torch.randn(n, 3, size, size, generator=gen).to(self.settings.device)


def measure_train(probe: Probe) -> None:
    """Training steps as the engine runs them: the method's objective under autocast, backward (with the
    method's grad-terms and gradient transform), SGD (momentum 0.9, weight decay 5e-4)."""
    settings, learner, autocast, memory, result = (probe.settings, probe.learner, probe.autocast, probe.memory,
                                                   probe.result)
    device = torch.device(settings.device)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    images = probe.random_images(settings.batch, gen)
    labels = torch.randint(0, result.classes, (settings.batch,), generator=gen).to(device)
    params = learner.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4) if params else None
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16" and bool(params))
    learner.train()
    memory.reset()
    times: list[float] = []
    for i in range(settings.warmup + settings.steps):
        sync(device)
        start = time.perf_counter()
        with autocast():
            objective = learner(images, labels)
        loss = objective.total
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            held: dict[str, list[Any]] = {}
            backward_objective(objective, params, 1.0, held, scaler)
            finish_gradients(learner, held, None, scaler, optimizer)
            scaler.step(optimizer)
            scaler.update()
        sync(device)
        elapsed = time.perf_counter() - start
        if i == 0:
            result.first_loss = float(loss.detach())
        if i >= settings.warmup:
            times.append(elapsed)
        logger.debug("%s %d classes: step %d %.3f s", result.path, result.classes, i, elapsed)
    result.train_peak_memory_bytes = memory.peak()
    result.train_step_times_s = [round(t, 4) for t in times]
    result.train_step_s = statistics.median(times)
    learner.zero_grad(set_to_none=True)


def measure_eval(probe: Probe) -> None:
    """Evaluation (text once; per batch on the reference path), interleaved with the plain image encoder,
    after one untimed batch of each."""
    settings, learner, autocast, memory, result = (probe.settings, probe.learner, probe.autocast, probe.memory,
                                                   probe.result)
    device = torch.device(settings.device)
    default = result.path == "default"
    learner.eval()
    gen = torch.Generator().manual_seed(settings.seed + 3)
    sizes = [
        min(settings.eval_batch, settings.eval_images - i)
        for i in range(0, settings.eval_images, settings.eval_batch)
    ]
    inputs = [probe.random_images(b, gen) for b in sizes]
    memory.reset()
    eval_time = encoder_time = 0.0
    with torch.inference_mode() if default else torch.no_grad(), autocast():
        # untimed first pass of each (one-off allocations and kernel set-up in this fresh process)
        learner.predict_logits(inputs[0], learner.class_text_features() if default else None)
        learner.clip.encode_image(inputs[0])
        sync(device)
        start = time.perf_counter()
        text = learner.class_text_features() if default else None
        sync(device)
        eval_time = time.perf_counter() - start
        result.eval_text_features_s = eval_time if default else None
        for x in inputs:
            start = time.perf_counter()
            learner.predict_logits(x, text)
            sync(device)
            middle = time.perf_counter()
            learner.clip.encode_image(x)
            sync(device)
            eval_time += middle - start
            encoder_time += time.perf_counter() - middle
    result.eval_peak_memory_bytes = memory.peak()
    result.eval_images_per_s = settings.eval_images / eval_time
    result.image_encoder_images_per_s = settings.eval_images / encoder_time
