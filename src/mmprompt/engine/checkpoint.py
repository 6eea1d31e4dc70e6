"""The training state written after every epoch, for exact resumption.

``<run>/checkpoint/state.pt`` holds the prompts, the optimizer (momentum buffers), the scheduler, the
gradient scaler, the number of finished epochs and the RNG states of Python, NumPy and torch. It is
written to a temporary file and renamed, so an interruption leaves the previous state intact. Only plain
containers and tensors are stored, so it loads with ``torch.load(weights_only=True)``.

The prompts of a finished run are saved separately (and for good) by :func:`mmprompt.checkpoint.save_prompts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write

__all__ = [
    "STATE_FILE",
    "capture_rng",
    "config_fingerprint",
    "load_state",
    "restore_rng",
    "save_state",
    "seed_everything",
    "state_path",
]

logger = logging.getLogger(__name__)

STATE_FILE = "checkpoint/state.pt"
STATE_VERSION = 1


def state_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATE_FILE


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch as plain lists and tensors."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_fingerprint(values: Mapping[str, Any]) -> str:
    """A short hash of what must not change between an interrupted run and its resumption."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write a training state atomically (temporary file in the same folder, then ``os.replace``)."""
    atomic_write(path, lambda f: torch.save({"version": STATE_VERSION, **state}, f))


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state written by :func:`save_state`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable mmprompt training state ({exc}); delete it to start over") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} is not an mmprompt training state (version {STATE_VERSION})")
    return state
