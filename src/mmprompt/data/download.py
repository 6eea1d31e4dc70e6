"""``mmprompt data download``: fetch the benchmark's datasets into their official layouts, resumably.

Each dataset's files (``files:`` in ``catalog.yaml``) are downloaded into ``<root>/.mmprompt-download/<key>/``
(:mod:`mmprompt.data.fetch`: resumed, verified, sources tried in order), then extracted one by one into a
temporary folder (:mod:`mmprompt.data.extract`: refused if unsafe) and moved into the dataset's staging
folder. When every file is in, the staging folder becomes ``<root>/<folder>`` in one rename (or, when that
folder exists already, its entries are moved in), so a dataset folder never holds half an archive. Files
already installed are recorded in ``done.json`` and skipped by the next run; a complete dataset is skipped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmprompt.data.datasets import DATASETS, DatasetInfo, get_dataset_info
from mmprompt.data.datasets._base import DownloadFile
from mmprompt.data.errors import DataError
from mmprompt.data.extract import extract_archive, sort_imagenet_val, unpack_nested_tars
from mmprompt.data.fetch import DiskSpaceError, DownloadError, checksum_of, fetch_file, host_of, verify_file
from mmprompt.fileio import atomic_write_json

__all__ = ["MARKER", "DatasetPlan", "DiskSpaceError", "DownloadError", "download_dataset", "downloadable",
           "format_plan", "plan_downloads", "prepare_root", "resolve_names"]

logger = logging.getLogger(__name__)

WORK_DIR = ".mmprompt-download"
MARKER = ".mmprompt-download.json"
"""Written into a dataset folder once every file of the dataset is in place."""


def downloadable() -> list[str]:
    """The datasets ``mmprompt data download all`` fetches (those with files in the catalogue)."""
    return [key for key, info in DATASETS.items() if info.files]


def resolve_names(names: Sequence[str]) -> list[str]:
    """Canonical keys of ``names`` (``all``: every downloadable dataset), in the catalogue's order."""
    if any(n.lower() == "all" for n in names):
        return downloadable()
    keys = []
    for name in names:
        try:
            key = get_dataset_info(name).key
        except KeyError:
            raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(downloadable())} "
                            "(or 'all')") from None
        if not DATASETS[key].files:
            raise DataError(f"{key}: nothing to download. {DATASETS[key].download}")
        if key not in keys:
            keys.append(key)
    return keys


def prepare_root(root: str | os.PathLike[str]) -> Path:
    """The data root as an absolute path, created if needed; a clear error when it cannot be written."""
    path = Path(os.path.abspath(Path(root).expanduser()))
    if path.exists() and not path.is_dir():
        raise DataError(f"the data root {path} is a file; expected a folder (it holds one folder per dataset)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mmprompt-write-test."):
            pass
    except OSError as exc:
        raise DataError(f"cannot write to the data root {path} ({exc.strerror or exc}): choose a folder you can "
                        "write to, e.g. --data-root ~/data") from None
    return path


@dataclass
class FilePlan:
    """One file of a dataset and what a run does with it."""

    file: DownloadFile
    state: str
    """``installed`` (in the staging folder), ``downloaded`` (archive here, verified), ``partial``
    (a ``.part`` to continue), ``local`` (taken from ``--from-archive``), ``todo`` or ``manual``
    (no source: needs ``--from-archive``)."""
    local: Path | None = None
    partial_bytes: int = 0
    """How much of a ``partial`` file is already here."""

    @property
    def size(self) -> int:
        """The file's size: the local copy's when there is one, else the catalogue's (maybe an estimate)."""
        return self.local.stat().st_size if self.local is not None else self.file.size


@dataclass
class DatasetPlan:
    """One dataset of a download run: its files' plans, or why it is skipped."""

    info: DatasetInfo
    files: list[FilePlan] = field(default_factory=list)
    complete: str = ""
    """Why the dataset is skipped ("" when it is not)."""

    @property
    def to_download(self) -> int:
        return sum(p.file.size - p.partial_bytes for p in self.files if p.state in ("todo", "partial"))

    @property
    def archive_bytes(self) -> int:
        """Archives this run downloads (kept until the dataset is in place)."""
        return 0 if self.complete else sum(
            p.size - p.partial_bytes for p in self.files if p.state in ("todo", "partial"))

    @property
    def extracted_bytes(self) -> int:
        """What the pending files extract to (images barely compress: about their archives' size)."""
        return 0 if self.complete else sum(p.size for p in self.files if p.state != "installed")

    @property
    def disk_needed(self) -> int:
        """Bytes this dataset needs at its peak: its archives plus what they extract to."""
        return self.archive_bytes + self.extracted_bytes


def _work(root: Path, info: DatasetInfo) -> Path:
    return root / WORK_DIR / info.key


def _done(work: Path) -> dict[str, str]:
    try:
        return json.loads((work / "done.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _present(info: DatasetInfo, root: Path) -> str:
    """Why the dataset needs no download ("" when it does)."""
    folder = info.dataset_dir(root)
    if (folder / MARKER).is_file():
        return "complete (downloaded earlier)"
    needed = [r for r in info.requirements if r.needed == "always"]
    have = all((folder / r.path).is_dir() if r.kind == "dir" else (folder / r.path).is_file() for r in needed)
    if needed and have and (info.split_file is None or (folder / info.split_file).is_file()):
        return "complete (its files are already in place)"
    return ""


def _local_file(file: DownloadFile, from_archive: Path | None) -> Path | None:
    if from_archive is None:
        return None
    if from_archive.is_file():
        return from_archive if from_archive.name == file.name else None
    candidate = from_archive / file.name
    return candidate if candidate.is_file() else None


def plan_downloads(keys: Sequence[str], root: Path, from_archive: Path | None = None) -> list[DatasetPlan]:
    """What downloading ``keys`` into ``root`` involves, file by file (nothing is written)."""
    plans = []
    for key in keys:
        info = DATASETS[key]
        plan = DatasetPlan(info, complete=_present(info, root))
        work, done = _work(root, info), _done(_work(root, info))
        for file in info.files:
            local = _local_file(file, from_archive)
            if plan.complete or file.name in done:
                state = "installed"
            elif (work / file.name).is_file():
                state = "downloaded"
            elif local is not None:
                state = "local"
            elif not file.urls:
                state = "manual"
            else:
                state = "partial" if (work / f"{file.name}.part").is_file() else "todo"
            part = work / f"{file.name}.part"
            plan.files.append(FilePlan(file, state, local, part.stat().st_size if state == "partial" else 0))
        plans.append(plan)
    if from_archive is not None and from_archive.is_file() and not any(
            p.local for plan in plans for p in plan.files):
        names = [f.file.name for plan in plans for f in plan.files]
        raise DataError(f"--from-archive {from_archive}: not one of the files of {', '.join(keys)} "
                        f"(expected one of: {', '.join(names)})")
    return plans


def _gb(n: int) -> str:
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _free(root: Path) -> int:
    """Free bytes on the file system that holds ``root`` (or its nearest existing parent)."""
    while not root.exists() and root != root.parent:
        root = root.parent
    return shutil.disk_usage(root).free


def format_plan(plans: Sequence[DatasetPlan], root: Path) -> str:
    """The plan as text: every file with its size, hosts, checksum and state; the totals and disk space."""
    lines = [f"data root {root}"]
    for plan in plans:
        lines.append(f"{plan.info.key} -> {plan.info.dataset_dir(root)}" +
                     (f": {plan.complete}, skipped" if plan.complete else ""))
        for p in plan.files:
            checksum = checksum_of(p.file)
            check = f"{checksum[0]} {checksum[1][:12]}..." if checksum else "checksum unknown (none published)"
            size = ("" if p.file.size_exact or p.local else "~") + _gb(p.size)
            hosts = ", then ".join(dict.fromkeys(host_of(u) for u in p.file.urls)) or "no public source: --from-archive"
            lines.append(f"  {p.file.name:<40} {size:>10}  {p.state:<10} {check:<34} {hosts}")
        if plan.info.manual and any(p.state == "manual" for p in plan.files):
            lines.append(f"  note: {plan.info.manual}")
    total = sum(p.to_download for p in plans)
    # datasets are done one after another and their archives deleted: the peak is every extracted dataset
    # plus the archives of the largest one
    need = sum(p.extracted_bytes for p in plans) + max((p.archive_bytes for p in plans), default=0)
    lines.append(f"to download: about {_gb(total)}; disk space needed: about {_gb(need)} (the extracted datasets, "
                 f"plus one dataset's archives at a time); free at {root}: {_gb(_free(root))}")
    lines.append("sizes marked ~ are estimates, not the hosts' exact sizes")
    return "\n".join(lines)


def _merge(source: Path, target: Path, keep_existing: bool = False) -> int:
    """Move ``source``'s entries into ``target``, replacing files there (``keep_existing``: keeping them);
    returns how many existing files were kept."""
    target.mkdir(parents=True, exist_ok=True)
    kept = 0
    for entry in sorted(source.iterdir()):
        dest = target / entry.name
        if dest.is_dir() and entry.is_dir() and not dest.is_symlink():
            kept += _merge(entry, dest, keep_existing)
        elif not dest.exists() and not dest.is_symlink():
            os.replace(entry, dest)
        elif keep_existing:
            kept += 1
        else:
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
            os.replace(entry, dest)
    return kept


def _install(plan: FilePlan, archive: Path, staging: Path, work: Path) -> None:
    """Extract (or copy) ``archive`` into a temporary folder, then move the result into ``staging``."""
    file = plan.file
    tmp = Path(tempfile.mkdtemp(dir=work, prefix=f"extract-{file.name}."))
    try:
        target = tmp / file.into if file.into else tmp
        target.mkdir(parents=True, exist_ok=True)
        if file.extract == "none":
            shutil.copyfile(archive, target / file.name)
        else:
            logger.info("extracting %s", archive.name)
            extract_archive(archive, file.extract, target, file.strip)
            if file.unpack == "nested_tars":
                unpack_nested_tars(target)
            elif file.unpack == "imagenet_val":
                sort_imagenet_val(target, staging)
        _merge(tmp, staging)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_space(plan: DatasetPlan, root: Path, completed: Sequence[str]) -> None:
    need, free = plan.disk_needed, _free(root)
    if need > free:
        raise DiskSpaceError(_space_message(plan, root, need, free, completed))


def _space_message(plan: DatasetPlan, root: Path, need: int, free: int | None, completed: Sequence[str]) -> str:
    have = f"{_gb(free)} free" if free is not None else "the disk is full"
    done = ", ".join(completed) if completed else "none"
    return (f"not enough disk space at {root} for {plan.info.key}: it needs about {_gb(need)}, {have}. Complete "
            f"so far: {done}. Free some space (or choose another --data-root) and run the command again: "
            "finished datasets and files are kept and partial downloads are continued.")


def download_dataset(plan: DatasetPlan, root: Path, progress: bool = True, keep_archives: bool = False,
                     completed: Sequence[str] = ()) -> Path:
    """Download, verify and extract every file of ``plan`` into ``<root>/<folder>``; returns that folder."""
    info, folder = plan.info, plan.info.dataset_dir(root)
    if plan.complete:
        return folder
    manual = [p.file.name for p in plan.files if p.state == "manual"]
    if manual:
        raise DownloadError(f"{info.key}: {', '.join(manual)} cannot be downloaded from a public host. "
                            f"{info.manual or 'Pass your copy with --from-archive PATH.'}")
    _check_space(plan, root, completed)
    for p in plan.files:  # the user's own archives are checked before anything is downloaded
        if p.state == "local":
            assert p.local is not None
            logger.info("%s: using %s", p.file.name, p.local)
            problem = verify_file(p.local, p.file, progress)
            if problem is not None:
                raise DownloadError(f"--from-archive {p.local}: {problem}; it is not the expected {p.file.name}")
    work = _work(root, info)
    staging = work / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    done = _done(work)
    try:
        for p in plan.files:
            if p.state == "installed":
                continue
            if p.state == "local":
                assert p.local is not None
                archive = p.local
            else:
                archive = work / p.file.name
                if p.state != "downloaded":
                    fetch_file(p.file, archive, progress=progress)
            _install(p, archive, staging, work)
            done[p.file.name] = (checksum_of(p.file) or ("", "unknown"))[1]
            atomic_write_json(work / "done.json", done)
            if archive.parent == work and not keep_archives:
                archive.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, DiskSpaceError):
            raise DiskSpaceError(_space_message(plan, root, plan.disk_needed, None, completed)) from exc
        raise
    if folder.exists():
        kept = _merge(staging, folder, keep_existing=True)
        if kept:
            logger.warning("%s: %d file(s) were already in %s and were kept as they are", info.key, kept, folder)
    else:
        os.replace(staging, folder)  # the whole dataset appears in one step
    atomic_write_json(folder / MARKER, {"dataset": info.key, "files": done})
    if not keep_archives:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def download_datasets(keys: Sequence[str], root: Path, from_archive: Path | None = None, progress: bool = True,
                      keep_archives: bool = False,
                      on_done: Callable[[DatasetPlan, Path], None] | None = None) -> list[Path]:
    """Download every dataset of ``keys`` in turn; ``on_done(plan, folder)`` is called after each.

    A dataset that cannot be downloaded (a host down, ImageNet without ``--from-archive``) does not stop the
    others: the run continues and then raises :class:`DownloadError` naming each such dataset and why. A full
    disk stops the run at once (:class:`DiskSpaceError`).
    """
    plans = plan_downloads(keys, root, from_archive)
    completed: list[str] = [p.info.key for p in plans if p.complete]
    folders, failed = [], []
    for plan in plans:
        if plan.complete:
            logger.info("%s: %s; skipped", plan.info.key, plan.complete)
        try:
            folder = download_dataset(plan, root, progress, keep_archives, completed)
        except DownloadError as exc:
            if len(plans) == 1:
                raise
            logger.error("%s: not downloaded: %s", plan.info.key, exc)
            failed.append(f"{plan.info.key} ({exc})")
            continue
        if not plan.complete:
            completed.append(plan.info.key)
        folders.append(folder)
        if on_done is not None:
            on_done(plan, folder)
    if failed:
        raise DownloadError(f"complete: {', '.join(completed) or 'none'}. Not downloaded: {'; '.join(failed)}")
    return folders
