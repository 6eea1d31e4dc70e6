"""Atomic file writes: an output is either the old file or the whole new one, never half-written.

Files are created with the permissions a plain ``open()`` would give (``0o666`` less the user's umask),
so teammates on a shared server can read results. A write that fails (a full disk, a lost mount) raises
:class:`WriteError` naming the file and leaves the previous version in place; the temporary file of a
process killed mid-write is removed by :func:`remove_stale_temp_files` on the next start.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

__all__ = [
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "current_umask",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

# ".<name>.<8 random characters>.tmp", the names mkstemp gives in atomic_write
_TEMP_NAME = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")
RUN_FILES = frozenset({"config.yaml", "metrics.json", "prompts.json", "prompts.safetensors", "log.jsonl", "state.pt"})
"""The files of a run folder whose temporaries :func:`remove_stale_temp_files` removes."""


class WriteError(OSError):
    """A file could not be written (disk full, read-only, permission); the previous version is unchanged."""


def current_umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(path: Path, exc: BaseException) -> WriteError:
    code = getattr(exc, "errno", None)
    if code is None and "inline_container" in str(exc):  # torch's writer hides the OS error
        code = errno.EIO
    reason = os.strerror(code) if code else str(exc)
    hint = " Free some space and run the command again (with --resume for a training run)." if code in (
        errno.ENOSPC, errno.EDQUOT) else ""
    return WriteError(code or errno.EIO, f"cannot write {path}: {reason}; the previous version of the file, "
                      f"if any, is unchanged.{hint}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    Raises :class:`WriteError` (an ``OSError`` naming ``path``) when the data cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "inline_container" in str(exc)):
            raise _write_error(path, exc) from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2, **dump_options: Any) -> Path:
    text = json.dumps(obj, indent=indent, **dump_options) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(
    folder: str | os.PathLike[str], names: Collection[str] = RUN_FILES, subfolders: Collection[str] = ("checkpoint", "tb")
) -> list[Path]:
    """Delete the temporary files that writes killed half-way left in ``folder`` (and its ``subfolders``);
    returns them. Only temporaries of the files in ``names`` (or TensorBoard event files) are touched.

    Only call this while no other process writes into ``folder`` (hold its run lock).
    """
    folder = Path(folder)
    removed = []
    for place in (folder, *(folder / sub for sub in subfolders)):
        if not place.is_dir():
            continue
        for p in place.glob(".*.tmp"):
            m = _TEMP_NAME.match(p.name)
            if m and p.is_file() and (m.group(1) in names or m.group(1).startswith("events.out.tfevents.")):
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", len(removed), folder)
    return removed
