"""What every dataset reader declares, and the helpers the readers share."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmprompt.data.errors import DatasetNotFoundError, SplitFileError
from mmprompt.data.samples import Sample, split_per_class

RawSplits = tuple[list[Sample], list[Sample], list[Sample]]
Reader = Callable[[Path, random.Random], RawSplits]

COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class Requirement:
    """A file or folder of the official layout, relative to the dataset folder.

    ``needed`` is ``"always"``, or ``"no_split"`` for what is read only to generate a split when the
    ``split_zhou_*.json`` file is absent.
    """

    path: str
    kind: Literal["file", "dir"]
    what: str
    needed: Literal["always", "no_split"] = "always"


@dataclass(frozen=True)
class DownloadFile:
    """One file of a dataset as ``mmprompt data download`` fetches it (see :mod:`mmprompt.data.download`).

    ``urls`` are tried in order: the official host(s) first, then public mirrors; an empty list means the
    file cannot be downloaded without a login (``--from-archive``). ``size`` is its size in bytes, exact
    when ``size_exact``, else an estimate used only for the plan and the disk-space check. ``md5`` /
    ``sha256`` is the published checksum (``None``: none is published, the file cannot be verified).
    ``extract``: ``tar`` / ``zip`` archives are unpacked into ``into`` (a folder of the dataset folder)
    after dropping the leading folder(s) ``strip`` of every member; ``none`` copies the file there.
    ``unpack`` names an extra step for archives of archives (ImageNet's).
    """

    name: str
    urls: tuple[str, ...]
    size: int
    what: str
    size_exact: bool = False
    md5: str | None = None
    sha256: str | None = None
    extract: Literal["tar", "zip", "none"] = "none"
    into: str = ""
    strip: str = ""
    unpack: Literal["", "nested_tars", "imagenet_val"] = ""


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of the benchmark: where it lives, how to read it, how many classes it should have.

    ``reader(dataset_dir, rng)`` returns ``(train, val, test)`` with paths relative to the image folder.
    For datasets with a ``split_file`` it is called only when that file is absent (and then uses ``rng``
    to generate the split); for the others it is the only way to read the dataset.
    """

    key: str
    coop_name: str
    folder: str
    image_subdir: str
    num_classes: int
    reader: Reader
    download: str
    split_file: str | None = None
    requirements: tuple[Requirement, ...] = ()
    aliases: tuple[str, ...] = ()
    val_is_test: bool = False
    test_only: bool = False
    display_name: str = ""
    files: tuple[DownloadFile, ...] = ()
    """What ``mmprompt data download`` fetches, in order (empty: nothing to download)."""
    manual: str = ""
    """Why some files need the user's own archives (``--from-archive``), and where to get them."""

    @property
    def label(self) -> str:
        """The name printed in the paper's tables ("DTD", "Flowers102", "ImageNet-A"...)."""
        return self.display_name or self.coop_name

    def dataset_dir(self, root: str | Path) -> Path:
        return Path(root) / self.folder

    def image_dir(self, root: str | Path) -> Path:
        d = self.dataset_dir(root)
        return d / self.image_subdir if self.image_subdir else d


def split_file_hint(info: DatasetInfo) -> str:
    """Where the official split file comes from, in words."""
    auto = f"run `mmprompt data download {info.key} --data-root <root>`, or " if info.files else ""
    return (
        f"{auto}download {info.split_file} from the Google Drive link in the {info.coop_name} section of CoOp's "
        f"DATASETS.md ({COOP_DATASETS_MD}) and put it in the dataset folder"
    )


# ----------------------------------------------------------------------------------------------------------
# helpers


def require(path: Path, what: str, info_download: str = "") -> Path:
    """Return ``path`` if it exists, else raise naming it and saying how to get it."""
    if not path.exists():
        hint = f" {info_download}" if info_download else ""
        raise DatasetNotFoundError(f"{what} not found: expected {path}.{hint}")
    return path


def is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[str]:
    """Sorted names of the image files in ``folder`` (hidden files and non-images skipped).

    The official code uses ``os.listdir`` order, which depends on the file system; sorting makes a
    generated split the same on every machine.
    """
    return sorted(p.name for p in folder.iterdir() if p.is_file() and is_image(p.name))


def list_dirs(folder: Path, ignored: Sequence[str] = ()) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in ignored
    )


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise SplitFileError(f"{path}: not UTF-8 text (byte offset {e.start}); re-download or re-save it") from None


class LineError(ValueError):
    """What is wrong with one line of a list file; :func:`samples_from_lines` adds the file and line."""


def samples_from_lines(path: Path, parse: Callable[[str], Sample | None]) -> list[Sample]:
    """The samples of a list file, one per non-empty line; ``parse`` returns ``None`` to skip a line.

    A :class:`LineError` from ``parse`` becomes a :class:`SplitFileError` naming the file and line number.
    """
    items = []
    for n, line in enumerate(read_lines(path), 1):
        try:
            sample = parse(line)
        except LineError as e:
            raise SplitFileError(f"{path}, line {n}: {e}") from None
        if sample is not None:
            items.append(sample)
    return items


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SplitFileError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise SplitFileError(f"{path}: not UTF-8 text (byte offset {e.start}); re-download or re-save it") from None


def read_wnid_classnames(path: Path) -> dict[str, str]:
    """CoOp's ImageNet ``classnames.txt``: lines ``n01440764 tench`` -> {wnid: name}, in file order."""
    out: dict[str, str] = {}
    for line in read_lines(path):
        folder, _, name = line.partition(" ")
        out[folder] = name.strip()
    return out


def read_and_split_folders(
    image_dir: Path,
    rng: random.Random,
    ignored: Sequence[str] = (),
    new_cnames: dict[str, str] | None = None,
    p_trn: float = 0.5,
    p_val: float = 0.2,
) -> RawSplits:
    """A folder per class -> a 50/20/30 split per class (CoOp's ``DTD.read_and_split_data``)."""
    groups = []
    for label, category in enumerate(list_dirs(image_dir, ignored)):
        paths = [f"{category}/{name}" for name in list_images(image_dir / category)]
        groups.append((label, (new_cnames or {}).get(category, category), paths))
    if not groups:
        raise DatasetNotFoundError(f"no class folders found in {image_dir}")
    return split_per_class(groups, rng, p_trn, p_val)


def read_wnid_folders(image_dir: Path, classnames: dict[str, str], source: Path) -> list[Sample]:
    """Sorted wnid folders -> samples labelled 0.. in folder order (ImageNet-Sketch, -A, -R)."""
    items = []
    for label, folder in enumerate(list_dirs(image_dir)):
        if folder not in classnames:
            raise SplitFileError(f"{source}: no class name for the folder {image_dir / folder}")
        items += [Sample(f"{folder}/{n}", label, classnames[folder]) for n in list_images(image_dir / folder)]
    if not items:
        raise DatasetNotFoundError(f"no images found in the class folders of {image_dir}")
    return items


def load_mat(path: Path) -> dict[str, Any]:
    """Read a MATLAB file with SciPy (needed only to generate a split from the .mat annotations)."""
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetNotFoundError(
            f"reading {path} needs SciPy (pip install scipy); alternatively put the official split_zhou "
            "file in the dataset folder, which needs no .mat file"
        ) from e
    return loadmat(str(path))
