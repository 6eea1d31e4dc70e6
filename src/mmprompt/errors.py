"""Errors a user can fix, and how the command line reports them (one message, a documented exit code).

Exit codes of ``mmprompt`` (also in the README):

=====  ==================================================================================
0      success
1      the command ran but did not succeed: NaN loss, some images could not be predicted,
       ``data check`` found problems; also an unexpected error (a bug: shown with its traceback)
2      bad command line or config: unknown key, invalid value, missing argument
3      data: dataset folder, split file, CSV, class names, missing or corrupt images
4      weights or checkpoint: CLIP weights, prompt checkpoint, training state
5      files: cannot read or write a file (disk full, permission, read-only)
6      device: the requested device does not exist or is not available
       (a batch or an image that does not fit in memory exits with 1, saying what to lower)
7      the output folder is in use by another run
130    interrupted (Ctrl-C)
=====  ==================================================================================

A traceback is printed only with ``mmprompt --debug`` (or ``MMPROMPT_DEBUG=1``), and always for errors
that are not in the list above, which are bugs.
"""

from __future__ import annotations

import errno
import sys
from typing import NamedTuple

__all__ = [
    "EXIT_BUSY",
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_DEVICE",
    "EXIT_FAILED",
    "EXIT_FILES",
    "EXIT_INTERRUPTED",
    "EXIT_WEIGHTS",
    "CheckpointError",
    "DeviceError",
    "MemoryLimitError",
    "UsageError",
    "UserErrorInfo",
    "classify_error",
    "is_out_of_memory",
    "raise_if_out_of_memory",
]

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_WEIGHTS = 4
EXIT_FILES = 5
EXIT_DEVICE = 6
EXIT_BUSY = 7
EXIT_INTERRUPTED = 130


class CheckpointError(ValueError):
    """A prompt checkpoint or training state is missing, unreadable, or does not fit the run."""


class DeviceError(ValueError):
    """The requested device is malformed or not available on this machine."""


class MemoryLimitError(MemoryError):
    """A batch or an image did not fit in memory; the message says the size tried and what to lower."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A Python MemoryError, or torch's out-of-memory error on a GPU or from its CPU allocator."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text
                                              or "can't allocate memory" in text
                                              or "is killed by signal: Killed" in text)  # a loader worker, by the OOM killer


def raise_if_out_of_memory(exc: BaseException, doing: str, lower: str) -> None:
    """Raise :class:`MemoryLimitError` ("out of memory <doing>: lower <lower>") if ``exc`` is an
    out-of-memory error; return otherwise (the caller re-raises ``exc``)."""
    if is_out_of_memory(exc):
        raise MemoryLimitError(f"out of memory {doing}: lower {lower}") from None


class UsageError(ValueError):
    """The command line is incomplete or inconsistent (a missing or conflicting option): exit code 2."""


class UserErrorInfo(NamedTuple):
    """How to report an error: its category (shown) and the exit code."""

    category: str
    code: int
    message: str


def _loaded(module: str, name: str) -> type | None:
    """A class from an already imported module (never imports: the error could not come from it otherwise)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def classify_error(exc: BaseException) -> UserErrorInfo | None:
    """The category and exit code of an error the user can fix, or None for a bug (show the traceback)."""
    from .config import ConfigError
    from .data.errors import DataError
    from .runlock import RunLockedError

    msg = _message(exc)
    checks: list[tuple[type | None, str, int]] = [
        (RunLockedError, "output folder in use", EXIT_BUSY),
        (UsageError, "command line", EXIT_CONFIG),
        (ConfigError, "config", EXIT_CONFIG),
        (DataError, "data", EXIT_DATA),
        (DeviceError, "device", EXIT_DEVICE),
        (MemoryLimitError, "out of memory", EXIT_FAILED),
        (CheckpointError, "checkpoint", EXIT_WEIGHTS),
        (_loaded("mmprompt.clip.weights", "ChecksumError"), "weights", EXIT_WEIGHTS),
        (_loaded("mmprompt.clip.weights", "WeightsUnavailableError"), "weights", EXIT_WEIGHTS),
        (_loaded("mmprompt.clip.describe", "MissingFieldError"), "weights", EXIT_WEIGHTS),
        (_loaded("mmprompt.clip.describe", "UnsupportedCheckpointError"), "weights", EXIT_WEIGHTS),
        (_loaded("mmprompt.engine.train", "NonFiniteLossError"), "training stopped", EXIT_FAILED),
    ]
    for cls, category, code in checks:
        if cls is not None and isinstance(exc, cls):
            return UserErrorInfo(category, code, msg)
    if isinstance(exc, PermissionError) and "TorchScript" in msg:
        return UserErrorInfo("weights", EXIT_WEIGHTS, msg.replace("allow_torchscript=True", "--allow-torchscript"))
    if isinstance(exc, UnicodeError):
        return UserErrorInfo("data", EXIT_DATA, f"a text file is not UTF-8: {msg}")
    if isinstance(exc, OSError):
        if isinstance(exc, FileNotFoundError) and ("weights" in msg.lower() or "CLIP" in msg):
            return UserErrorInfo("weights", EXIT_WEIGHTS, msg)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                         errno.EISDIR, errno.ENOTDIR, errno.EIO, errno.EEXIST, errno.ENAMETOOLONG) or exc.errno is None:
            return UserErrorInfo("files", EXIT_FILES, msg)
        return None
    if isinstance(exc, (ValueError, KeyError)):
        return UserErrorInfo("invalid input", EXIT_CONFIG, msg)
    return None
