"""``check_dataset``: validate a dataset folder and explain, in words a new user can act on, what to fix."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmprompt.data.build import diagnose_root, load_split
from mmprompt.data.datasets import DatasetInfo, get_dataset_info
from mmprompt.data.datasets._base import split_file_hint
from mmprompt.data.errors import DataError
from mmprompt.data.images import validate_samples
from mmprompt.data.samples import SPLIT_NAMES, Sample, classnames_from

log = logging.getLogger(__name__)
_SHOWN = 5


@dataclass
class CheckReport:
    """What ``check_dataset`` found: ``problems`` make the dataset unusable or not the paper's; ``notes`` inform."""

    dataset: str
    dataset_dir: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Usable, but probably not what was meant: duplicates, train/test overlap, classes without training images."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _missing_requirements(info: DatasetInfo, dataset_dir: Path, needed: str) -> list[str]:
    out = []
    for req in info.requirements:
        path = dataset_dir / req.path
        present = path.is_dir() if req.kind == "dir" else path.is_file()
        if req.needed == needed and not present:
            out.append(f"the {req.kind} {path} ({req.what}) is missing")
    return out


def check_split_images(
    splits: dict[str, list[Sample]], image_dir: Path, verify: bool, report: CheckReport
) -> None:
    """Every image exists (``verify``: decodes, all bad ones listed, and the image modes are noted)."""
    from collections import Counter

    from mmprompt.data.preflight import check_images
    from mmprompt.data.quality import describe_modes

    modes: Counter = Counter()
    for name, samples in splits.items():
        if not samples:
            continue
        try:
            if verify:
                found = check_images(samples, image_dir, what=f"{name} split", skip_corrupt=True, write_cache=False)
                modes.update(found.modes)
                if found.bad:
                    report.problems.append(f"{name} split: {len(found.bad)} of {len(samples)} images are missing or "
                                           "cannot be decoded:" + "".join(f"\n    {p} ({r})" for p, r in found.bad))
            else:
                validate_samples(samples, skip_corrupt=False, image_dir=image_dir, decode=False)
        except DataError as e:
            report.problems.append(f"{name} split: {e}")
    if modes:
        report.notes.append(f"image modes: {describe_modes(modes)}")
    elif not verify:
        report.notes.append("images were not decoded: add --verify-images to decode them and list their modes")


def add_split_findings(splits: dict[str, list[Sample]], classnames: list[str], report: CheckReport,
                       required: tuple[str, ...] = ("train", "test")) -> None:
    from mmprompt.data.quality import split_findings

    warnings, problems = split_findings(splits, classnames, required)
    report.warnings.extend(warnings)
    report.problems.extend(problems)


def check_dataset(name: str, root: str | os.PathLike[str], verify_images: bool = False) -> CheckReport:
    """Check ``<root>/<dataset folder>`` against the official layout and list every problem found.

    Checks the folder names, the files the reader needs, the split file, that every image the split
    lists exists (and decodes, with ``verify_images``), and the number of classes.
    """
    info = get_dataset_info(name)
    dataset_dir = Path(os.path.abspath(Path(root).expanduser())) / info.folder
    report = CheckReport(info.key, dataset_dir)
    if not dataset_dir.is_dir():
        report.problems.append(diagnose_root(info, root))
        return report

    missing = _missing_requirements(info, dataset_dir, "always")
    split_missing = info.split_file is not None and not (dataset_dir / info.split_file).is_file()
    if split_missing:
        report.problems.append(
            f"the split file {dataset_dir / info.split_file} is missing. To use the paper's split, "
            f"{split_file_hint(info)}. Without it mmprompt generates a split with the official rules (saved in "
            "its cache folder), which will differ from the paper's."
        )
        cannot_generate = _missing_requirements(info, dataset_dir, "no_split")
        if cannot_generate:
            report.problems.append("a split cannot be generated either: " + "; ".join(cannot_generate))
            missing += cannot_generate
    report.problems.extend(missing)
    if missing:
        auto = f"run `mmprompt data download {info.key} --data-root {root}`, or by hand: " if info.files else ""
        report.problems.append(f"To get {info.coop_name}: {auto}{info.download}")
        return report

    image_dir = dataset_dir / info.image_subdir if info.image_subdir else dataset_dir
    try:
        (train, val, test), source = load_split(info, dataset_dir, save=False, warn=False)
    except (DataError, OSError, KeyError, ValueError) as e:
        report.problems.append(f"cannot read the dataset: {e}")
        return report
    report.notes.append(f"split: {source}")
    splits = dict(zip(SPLIT_NAMES, (train, val, test)))
    report.notes.append(
        "images: " + ", ".join(f"{len(v)} {k}" for k, v in splits.items() if v or not info.test_only)
    )
    check_split_images(splits, image_dir, verify_images, report)

    try:
        classnames = classnames_from(train, val, test, source=source)
    except DataError as e:
        report.problems.append(str(e))
        return report
    n_classes = len(classnames)
    add_split_findings(splits, classnames, report, ("test",) if info.test_only else ("train", "test"))
    if n_classes != info.num_classes:
        report.notes.append(
            f"found {n_classes} classes; the official {info.coop_name} has {info.num_classes}, so results will "
            "not be comparable with the paper's"
        )
    else:
        report.notes.append(f"{n_classes} classes, as in the official dataset")
    fewshot = sorted((dataset_dir / "split_fewshot").glob("shot_*-seed_*.pkl"))
    if fewshot:
        report.notes.append(
            f"official few-shot caches found, read with a restricted unpickler: {', '.join(p.name for p in fewshot[:_SHOWN])}"
            + (" ..." if len(fewshot) > _SHOWN else "")
        )
    return report
