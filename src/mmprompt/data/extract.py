"""Safe extraction of dataset archives (tar, tar.gz, zip) into a fresh folder.

Every member is checked before it is written: an absolute path, a ``..`` component, a link pointing
outside the folder, or a device file makes the whole archive refused (:class:`UnsafeArchiveError`). The
caller extracts into a temporary folder and deletes it on any error, so a refused or broken archive
leaves nothing behind. ``strip`` drops leading folders of the members (``fgvc-aircraft-2013b/data``);
members outside it are skipped.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from mmprompt.data.errors import DataError

__all__ = ["UnsafeArchiveError", "extract_archive", "sort_imagenet_val", "unpack_nested_tars"]

logger = logging.getLogger(__name__)


class UnsafeArchiveError(DataError):
    """An archive member would land outside the target folder (``../``, an absolute path, an outside link)."""


def _relative(name: str, strip: str, archive: Path) -> str | None:
    """The member's path inside the target folder, None to skip it; refuses unsafe paths."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: the member {name!r} has an absolute path; the archive is refused")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: the member {name!r} points outside the target folder ('..'); "
                                 "the archive is refused")
    prefix = [p for p in strip.split("/") if p]
    if parts[: len(prefix)] != prefix:
        return None
    rest = parts[len(prefix):]
    return "/".join(rest) if rest else None


def _check_link(rel: str, target: str, member: str, archive: Path) -> None:
    if target.startswith("/") or posixpath.normpath(posixpath.join(posixpath.dirname(rel), target)).startswith(".."):
        raise UnsafeArchiveError(f"{archive}: the member {member!r} is a link to {target!r}, outside the target "
                                 "folder; the archive is refused")


def _extract_tar(archive: Path, dest: Path, strip: str) -> int:
    count = 0
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:  # streamed: a .tar.gz is read once
            rel = _relative(member.name, strip, archive)
            if member.issym() or member.islnk():
                if rel is None:
                    continue
                link = member.linkname
                if member.islnk():
                    link_rel = _relative(link, strip, archive)
                    if link_rel is None:
                        raise UnsafeArchiveError(f"{archive}: the member {member.name!r} is a hard link to "
                                                 f"{link!r}, outside the extracted part; the archive is refused")
                    link = posixpath.relpath(link_rel, posixpath.dirname(rel) or ".")
                _check_link(rel, link, member.name, archive)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: the member {member.name!r} is a device or pipe; "
                                         "the archive is refused")
            if rel is None:
                continue
            target = dest / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.issym() or member.islnk():
                target.symlink_to(link)
            else:
                source = tf.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            count += 1
    return count


def _extract_zip(archive: Path, dest: Path, strip: str) -> int:
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _relative(info.filename, strip, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                if rel is not None:
                    _check_link(rel, zf.read(info).decode("utf-8", "replace"), info.filename, archive)
                raise UnsafeArchiveError(f"{archive}: the member {info.filename!r} is a symbolic link; links in "
                                         "zip archives are not extracted, the archive is refused")
            if rel is None:
                continue
            target = dest / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            count += 1
    return count


def extract_archive(archive: Path, kind: str, dest: Path, strip: str = "") -> int:
    """Extract ``archive`` (``kind``: ``tar`` or ``zip``) into the folder ``dest``; returns the files written.

    Raises :class:`UnsafeArchiveError` for a member that would land outside ``dest`` and
    :class:`DataError` for a damaged archive; ``dest`` may then hold part of the archive: extract into a
    temporary folder and delete it on error.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        count = _extract_tar(archive, dest, strip) if kind == "tar" else _extract_zip(archive, dest, strip)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{archive} is damaged or not a {kind} archive ({exc}); delete it and download it again"
                        ) from exc
    if count == 0:
        where = f" under {strip}/" if strip else ""
        raise DataError(f"{archive} holds no files{where}: it is not the expected archive")
    return count


def unpack_nested_tars(folder: Path) -> None:
    """ImageNet's training archive holds one ``<wnid>.tar`` per class: unpack each into ``<wnid>/``."""
    inner = sorted(folder.glob("*.tar"))
    for i, tar in enumerate(inner, 1):
        extract_archive(tar, "tar", folder / tar.stem)
        tar.unlink()
        if i % 100 == 0:
            logger.info("unpacked %d of %d class archives", i, len(inner))


def sort_imagenet_val(folder: Path, dataset_dir: Path) -> None:
    """Move ImageNet's 50,000 validation images into ``<wnid>/`` folders, with the devkit's labels."""
    places = (dataset_dir / "devkit" / "ILSVRC2012_devkit_t12" / "data", dataset_dir / "ILSVRC2012_devkit_t12" / "data")
    data = next((p for p in places if (p / "meta.mat").is_file()), None)
    if data is None:
        raise DataError(f"sorting ImageNet's validation images needs the development kit "
                        f"(ILSVRC2012_devkit_t12.tar.gz), which is not extracted under {dataset_dir}")
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise DataError("sorting ImageNet's validation images reads the devkit's meta.mat with scipy: "
                        "pip install scipy (or mmprompt[datasets])") from exc
    synsets = loadmat(str(data / "meta.mat"), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    labels = [int(x) for x in (data / "ILSVRC2012_validation_ground_truth.txt").read_text().split()]
    images = sorted(p for p in folder.iterdir() if p.is_file())
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} validation images but {len(labels)} labels in the devkit")
    for image, label in zip(images, labels):
        (folder / wnid_of[label]).mkdir(exist_ok=True)
        image.rename(folder / wnid_of[label] / image.name)
