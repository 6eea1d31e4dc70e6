"""Evaluation: top-1 and per-class accuracy of a prompt learner on a list of samples.

Class text features are computed once per evaluation (:meth:`PromptLearner.class_text_features`) and
reused for every batch, except for methods whose text depends on the image (CoCoOp), which run per batch.
With several processes each evaluates a shard and the counts are summed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import raise_if_out_of_memory
from ..methods import PromptLearner
from .distributed import DistContext, all_reduce_sum
from .loader import ImageDataset, eval_loader
from .precision import autocast_context

__all__ = ["EvalResult", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Accuracies in percent (0-100), as in the paper's tables."""

    accuracy: float
    """Top-1 accuracy over all samples (micro average)."""
    mean_per_class_accuracy: float
    """Mean over classes that have test samples of their top-1 accuracy (macro average)."""
    per_class_accuracy: dict[str, float]
    """Class name -> accuracy (classes without test samples are left out)."""
    correct: int
    total: int
    num_classes: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    """The learner's inference path (``base`` / ``novel`` for MMRL); None for a method with one path."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["path"] is None:  # methods with one path keep their records as they were
            del out["path"]
        return out


@torch.no_grad()
def evaluate(
    learner: PromptLearner,
    samples: Sequence[Any],
    *,
    image_dir: str | Path | None = None,
    batch_size: int = 100,
    precision: str = "fp32",
    num_workers: int | None = 0,
    ctx: DistContext | None = None,
    skip_corrupt: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Top-1 and per-class accuracy of ``learner`` (on its current class names) on ``samples``.

    Labels must index ``learner.classnames``. Runs in eval mode without gradients.
    """
    from tqdm import tqdm

    from ..clip.transforms import transform_for

    if not samples:
        raise ValueError("no samples to evaluate")
    device = next(learner.parameters()).device
    ctx = ctx or DistContext(device=device)
    c = learner.clip.config
    transform = transform_for(c, train=False)
    dataset = ImageDataset(samples, transform, image_dir, skip_corrupt=skip_corrupt)
    loader = eval_loader(dataset, batch_size, num_workers, ctx.rank, ctx.world_size,
                         pin_memory=device.type == "cuda")
    n_cls = learner.num_classes
    correct = torch.zeros(n_cls, dtype=torch.float64, device=device)
    total = torch.zeros(n_cls, dtype=torch.float64, device=device)
    was_training = learner.training
    learner.eval()
    t0 = time.perf_counter()
    try:
        with autocast_context(precision, device):
            text = learner.class_text_features()
            for batch in tqdm(loader, desc=desc, disable=not (progress and ctx.is_main), leave=False):
                if batch is None:
                    continue
                labels = batch.labels.to(device)
                if int(labels.max()) >= n_cls:
                    raise ValueError(f"label {int(labels.max())} is out of range for {n_cls} classes")
                logits = learner.predict_logits(batch.images.to(device, non_blocking=True), text)
                hit = (logits.argmax(dim=-1) == labels).double()
                correct.index_add_(0, labels, hit)
                total.index_add_(0, labels, torch.ones_like(hit))
    except (MemoryError, RuntimeError) as exc:
        raise_if_out_of_memory(exc, f"evaluating batches of {batch_size} images ({precision} on {device})",
                               "eval_batch_size (--set eval_batch_size=N)")
        raise
    finally:
        learner.train(was_training)
    all_reduce_sum(correct, ctx)
    all_reduce_sum(total, ctx)
    n = float(total.sum())
    if n == 0:
        raise ValueError("no readable samples were evaluated")
    present = total > 0
    per_class = (correct[present] / total[present] * 100.0).tolist()
    names = [name for name, keep in zip(learner.classnames, present.tolist(), strict=True) if keep]
    result = EvalResult(
        accuracy=100.0 * float(correct.sum()) / n,
        mean_per_class_accuracy=sum(per_class) / len(per_class),
        per_class_accuracy=dict(zip(names, per_class, strict=True)),
        correct=int(correct.sum()),
        total=int(n),
        num_classes=n_cls,
        seconds=time.perf_counter() - t0,
    )
    logger.info("%s: top-1 %.2f%% (%d/%d), mean per-class %.2f%%", desc, result.accuracy, result.correct,
                result.total, result.mean_per_class_accuracy)
    return result
