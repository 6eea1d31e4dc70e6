"""A run's training logs: :class:`RunLogger` writes ``log.jsonl`` lines and TensorBoard scalars, and
:func:`truncate_run_logs` cuts them back to the training state before training resumes.

A run killed during epoch ``k + 1`` has logged some of that epoch's steps; the resumed run repeats
them. :func:`truncate_run_logs` drops every record after the last saved epoch (all training records when
no state is kept), so the logs hold each step once. It is called before the logs are opened for writing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..fileio import WriteError, atomic_write, atomic_write_bytes
from .checkpoint import load_state

__all__ = ["RunLogger", "truncate_run_logs"]

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
TB_DIR = "tb"
_EPOCH_TAG = "epoch/loss"  # one scalar per finished epoch, at the epoch's last global step


def _keep_line(line: str, epochs: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False  # a line cut by a kill
    if not isinstance(record, dict):
        return False
    epoch = record.get("epoch")
    return not isinstance(epoch, int) or epoch <= epochs


def _truncate_jsonl(path: Path, epochs: int, last_record: dict[str, Any] | None) -> int:
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = [ln for ln in lines if _keep_line(ln, epochs)]
    if last_record and epochs > 0:
        has_epoch = any(json.loads(ln).get("event") == "epoch" and json.loads(ln).get("epoch") == epochs for ln in kept)
        if not has_epoch:  # killed between saving the state and logging the epoch
            kept.append(json.dumps({"event": "epoch", **last_record}))
    if len(kept) != len(lines) or kept != lines:
        atomic_write_bytes(path, "".join(ln + "\n" for ln in kept).encode("utf-8"))
    return len(lines) - len(kept)


def _event_files(tb_dir: Path) -> list[Path]:
    return sorted(tb_dir.glob("events.out.tfevents.*")) if tb_dir.is_dir() else []


def _truncate_tensorboard(tb_dir: Path, epochs: int) -> int:
    files = _event_files(tb_dir)
    if not files:
        return 0
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter

    events = {f: list(EventFileLoader(str(f)).Load()) for f in files}
    epoch_steps = sorted({e.step for evs in events.values() for e in evs
                          if any(v.tag == _EPOCH_TAG for v in e.summary.value)})
    if epochs > len(epoch_steps):
        return 0  # the last epoch's scalars were never written: everything logged belongs to saved epochs
    limit = epoch_steps[epochs - 1] if epochs > 0 else 0
    dropped = 0
    for f, evs in events.items():
        kept = [e for e in evs if not (e.HasField("summary") and e.step > limit)]
        if len(kept) == len(evs):
            continue
        dropped += len(evs) - len(kept)

        def write(fh: Any, kept: list[Any] = kept) -> None:
            writer = RecordWriter(fh)
            for e in kept:
                writer.write(e.SerializeToString())

        atomic_write(f, write)
    return dropped


def truncate_run_logs(run_dir: str | Path, state_file: Path | None, tensorboard: bool = True) -> None:
    """Drop the log records (``log.jsonl``, ``tb/``) written after ``state_file``'s epoch (all: no state)."""
    run_dir = Path(run_dir)
    epochs, record = 0, None
    if state_file is not None and state_file.is_file():
        state = load_state(state_file)
        epochs, record = int(state["epoch"]), state.get("record")
    dropped = _truncate_jsonl(run_dir / LOG_FILE, epochs, record)
    if tensorboard:
        dropped += _truncate_tensorboard(run_dir / TB_DIR, epochs)
    if dropped:
        logger.info("removed %d log record(s) written after epoch %d (they are written again)", dropped, epochs)


class RunLogger:
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
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as exc:  # the system names no file: say which one
                raise WriteError(exc.errno, f"cannot write {self.file.name}: {exc.strerror or exc}; free some "
                                 "space and run the command again with --resume (the last epoch is kept)") from exc
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("epoch", "step", "event") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
