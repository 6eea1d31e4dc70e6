"""The one precision helper: fp32, or bf16 / fp16 autocast, for training, evaluation, bench and predict."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["DTYPES", "autocast_context", "check_precision"]

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16 / fp16 on ``device``, a no-op context for fp32."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise RuntimeError when this torch build cannot autocast to ``precision`` on ``device``."""
    if DTYPES.get(precision) is None:
        return
    try:
        with autocast_context(precision, device):
            a = torch.ones(2, 2, device=device)
            (a @ a).sum().item()
    except Exception as exc:  # the torch build does not autocast to this dtype on this device
        raise RuntimeError(
            f"{precision} autocast is not supported on {device.type} by torch {torch.__version__}: {exc}"
        ) from exc
