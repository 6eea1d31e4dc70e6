"""What one run cost: wall time, training images per second, peak memory and trainable parameters.

Measured, not estimated: CUDA's ``max_memory_allocated`` (reset when the run starts) and the process's
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` when the kernel allows it, else
``resource.getrusage``'s lifetime peak, marked ``process`` in ``peak_rss_scope``).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..bench.system import status_kb

__all__ = ["CostMeter", "count_parameters"]

_MIB = 1024 * 1024


def _reset_peak_rss() -> bool:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CostMeter:
    """Started when a run starts; :meth:`finish` returns the run's ``cost`` entry of ``metrics.json``."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.start = time.perf_counter()
        self.rss_scope = "run" if _reset_peak_rss() else "process"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def finish(
        self,
        trainable_parameters: int,
        train_samples: int = 0,
        batch_size: int = 1,
        epochs_run: int = 0,
        train_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """The cost of the run so far. Training images are the images of the epochs run in this session
        (full batches only when there are at least ``batch_size`` samples, as the loader drops the last)."""
        per_epoch = train_samples // batch_size * batch_size if train_samples >= batch_size else train_samples
        images = per_epoch * epochs_run
        hwm_kb = status_kb("VmHWM")
        if hwm_kb is None:
            hwm_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.rss_scope = "process"
        gpu = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            gpu = torch.cuda.max_memory_allocated(self.device) / _MIB
        return {
            "wall_seconds": time.perf_counter() - self.start,
            "train_images": images,
            "train_seconds": train_seconds,
            "train_images_per_second": images / train_seconds if images and train_seconds > 0 else None,
            "peak_gpu_mib": gpu,
            "peak_rss_mib": hwm_kb / 1024,
            "peak_rss_scope": self.rss_scope,
            "trainable_parameters": trainable_parameters,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
        }


def count_parameters(params: Sequence[torch.nn.Parameter]) -> int:
    """The number of scalars in ``params``."""
    return int(sum(p.numel() for p in params))
