"""Comparison helpers for the tests against reference implementations."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())
