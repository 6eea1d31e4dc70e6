"""The training state written after every epoch, for exact resumption.

``<run>/checkpoint/state.pt`` holds the prompts, the optimizer (momentum buffers), the scheduler, the
gradient scaler, the number of finished epochs and the RNG states of Python, NumPy and torch. It is
written to a temporary file and renamed, so an interruption leaves the previous state intact. Only plain
containers and tensors are stored, so it loads with ``torch.load(weights_only=True)``.

A resumed run must train what the interrupted one trained. :func:`resume_values` lists what changes
results (method, optimiser, precision, the data selection and the exact training images); fields that do
not (workers, logging, data root, skip-corrupt when nothing was skipped) never block a resume. A field
that a state does not record (added to mmprompt after the state was written) is read as its default.
:func:`check_resume` refuses a difference, listing each field old -> new, unless the caller allows it
(``--allow-config-change``), in which case the changes are returned to be recorded.

The prompts of a finished run are saved separately (and for good) by :func:`mmprompt.checkpoint.save_prompts`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write

__all__ = [
    "STATE_FILE",
    "ResumeMismatchError",
    "check_resume",
    "default_values",
    "resume_values",
    "saved_train_summary",
    "capture_rng",
    "config_fingerprint",
    "load_state",
    "restore_rng",
    "save_state",
    "seed_everything",
    "state_digest",
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


def state_digest(value: Any) -> str:
    """SHA-256 over a training state's contents: every tensor's dtype, shape and bytes and every plain
    value, with the key paths, in order (what :func:`save_state` records and :func:`load_state` checks)."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(v.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, Mapping):
            h.update(f"M{len(v)}:".encode())
            for k in v:
                h.update(f"K{k!r}:".encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}:".encode())
            for item in v:
                walk(item)
        else:
            h.update(f"V{type(v).__name__}{v!r};".encode())

    walk(value)
    return h.hexdigest()


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write a training state atomically (temporary file in the same folder, then ``os.replace``), with a
    checksum of its contents (:func:`state_digest`) that :func:`load_state` checks."""
    payload = {"version": STATE_VERSION, **state}
    payload["checksum"] = state_digest(payload)
    buf = io.BytesIO()  # serialised first, so a full disk is reported by the write, naming the file
    torch.save(payload, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state written by :func:`save_state`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable mmprompt training state ({exc}); delete it to start over") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path} is not an mmprompt training state (version {STATE_VERSION})")
    recorded = state.pop("checksum", None)
    if recorded is None:  # written before checksums were recorded
        logger.warning("%s has no checksum (an older mmprompt wrote it); its integrity is not checked", path)
    elif recorded != state_digest(state):
        raise CheckpointError(f"{path} is corrupted: its contents do not match the checksum written with it; "
                              "delete it to start over (or restore it from a backup)")
    return state


class ResumeMismatchError(CheckpointError):
    """The saved training state was written with settings that change results."""


# data fields that do not change what is trained (the training images themselves are compared instead)
_FREE_DATA_FIELDS = ("root", "num_workers", "skip_corrupt", "classnames_file", "split_file")


def _samples_digest(samples: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.path}\t{int(s.label)}\t{getattr(s, 'classname', '')}\n".encode())
    return f"{len(samples)} images (sha256 {h.hexdigest()[:12]})"


def _config_values(cfg: Any) -> dict[str, Any]:
    from ..methods.base import MethodConfig

    d = cfg.to_dict()
    exact_options = {f.name for f in dataclasses.fields(MethodConfig)}  # speed options with the same results
    out: dict[str, Any] = {f"method.{k}": v for k, v in d["method"].items() if k not in exact_options}
    out.update({f"data.{k}": v for k, v in d["data"].items() if k not in _FREE_DATA_FIELDS})
    out.update({f"optim.{k}": v for k, v in d["optim"].items()})
    out["precision"] = d["precision"]
    return json.loads(json.dumps(out, default=str))


def resume_values(cfg: Any, samples: Sequence[Any]) -> dict[str, Any]:
    """The flat ``{field: value}`` of a run config that changes results, plus the training images."""
    out = _config_values(cfg)
    out["data.train_images"] = _samples_digest(samples)
    return out


def default_values(current: Mapping[str, Any]) -> dict[str, Any]:
    """The default of every field of :func:`resume_values` (the method's own defaults for ``method.*``), as
    a state written before a field existed trained with it: what its missing fields are read as."""
    from ..config import ConfigError, RunConfig
    from ..methods import make_config

    try:
        cfg = RunConfig.from_dict({"method": {"name": current["method.name"]}})
        options = make_config(cfg.method.name, {})
        method = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
    except (ConfigError, KeyError, TypeError, ValueError):
        cfg, method = RunConfig(), {}
    return _config_values(cfg.replace(method=dataclasses.replace(cfg.method, options=method)))


# fields added after training states began recording their settings (at their default, they trained the same)
_ADDED_FIELDS = ("optim.schedule", "optim.min_lr", "optim.iterations", "optim.iterations_per_shot")


def check_resume(
    state: Mapping[str, Any], current: Mapping[str, Any], allow_change: bool, where: str | Path
) -> list[dict[str, Any]]:
    """Compare a saved state's :func:`resume_values` with the current ones.

    Returns the differences (``[{field, old, new}]``, empty when none) when they are allowed; raises
    :class:`ResumeMismatchError` listing them otherwise.
    """
    saved = state.get("resume_values")
    defaults = default_values(current)
    if saved is None:  # a state written before the values were recorded: only its fingerprint is known
        older = {k: v for k, v in current.items() if k not in _ADDED_FIELDS or v != defaults.get(k)}
        if state.get("fingerprint") in (config_fingerprint(current), config_fingerprint(older)):
            return []
        diffs = [{"field": "(unknown: the state records no settings)", "old": None, "new": None}]
    else:
        # a field the state does not record did not exist when it was written: it trained with the default
        saved = {**{k: defaults[k] for k in current if k not in saved and k in defaults}, **saved}
        keys = sorted(set(saved) | set(current))
        diffs = [{"field": k, "old": saved.get(k), "new": current.get(k)} for k in keys if saved.get(k) != current.get(k)]
    if not diffs:
        return []
    listing = "\n".join(f"  {d['field']}: {d['old']!r} -> {d['new']!r}" for d in diffs)
    if not allow_change:
        folder = Path(where).parent.parent
        raise ResumeMismatchError(
            f"{where} was written with other settings that change results:\n{listing}\n"
            "Resume anyway with --allow-config-change (the change is recorded in log.jsonl and metrics.json), "
            f"choose another --output, or delete {folder / 'checkpoint'} to start over"
        )
    logger.warning("resuming %s with changed settings (allowed):\n%s", where, listing)
    return diffs


def saved_train_summary(run_dir: str | Path) -> dict[str, Any]:
    """From ``run_dir``'s training state: the last epoch's record and the allowed config changes."""
    path = state_path(run_dir)
    if not path.is_file():
        return {}
    try:
        state = load_state(path)
    except CheckpointError:
        return {}
    return {"record": state.get("record") or {}, "config_changes": list(state.get("config_changes") or [])}
