"""One process per output folder: an OS-level lock on ``<folder>/.lock``.

The lock is ``fcntl.flock``: the kernel releases it when the process ends, however it ends (``kill -9``
included), so a stale lock never blocks a later run. The lock file records who holds it (pid, host,
start time) so that a refused run can say so. It stays in the folder after the run.

Network filesystems: on NFS, Linux emulates ``flock`` with byte-range (POSIX) locks, which work across
hosts with NFSv4 (and NFSv3 with a running lock daemon); on filesystems without lock support (some
FUSE and SMB mounts) taking the lock fails, and the run stops with a message instead of running unguarded.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "check_unlocked", "require_folder"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the output folder (or the folder cannot be locked)."""


def _holder_text(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (f"process {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f" ({info['command']})" if info.get("command") else ""))


class RunLock:
    """Hold ``<folder>/.lock`` exclusively while the ``with`` block runs (or until :meth:`release`).

    Raises :class:`RunLockedError` naming the folder and the holder when another process has it.
    ``enabled=False`` makes it a no-op (for the non-main processes of a data-parallel run).
    """

    def __init__(self, folder: str | os.PathLike[str], *, enabled: bool = True, command: str = "") -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.command = command
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> RunLock:
        if not self.enabled or self._fd is not None:
            return self
        import fcntl

        require_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"the output folder {self.folder} is in use by {_holder_text(self.path)}. Two runs must "
                    "not share a folder: wait for it to end, or choose another --output"
                ) from None
            raise RunLockedError(
                f"cannot lock the output folder {self.folder} ({os.strerror(exc.errno or 0)}); the filesystem may "
                "not support locks (some network or FUSE mounts): use a local folder for --output"
            ) from exc
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def require_folder(folder: str | os.PathLike[str]) -> None:
    """An output folder must be a folder (or not exist yet): a file there is a :class:`ConfigError` at once,
    before anything is loaded."""
    from .checks import ConfigError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder} is a file, not a folder: choose another --output")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--output {folder}: {parent} is a file, not a folder: choose another --output")
            break


def check_unlocked(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`RunLockedError` if a process holds ``folder``'s lock (takes and drops it at once), and
    a :class:`ConfigError` if ``folder`` is a file."""
    folder = Path(folder)
    require_folder(folder)
    if (folder / LOCK_FILE).is_file():
        RunLock(folder).acquire().release()
