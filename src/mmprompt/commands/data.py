"""``mmprompt data``: list, inspect and check datasets.

mmprompt data list
mmprompt data inspect --dataset caltech101 --data-root /data --shots 16 --seed 1 --subsample base --json
mmprompt data check --dataset caltech101 --data-root /data
mmprompt data download all --data-root /data --dry-run   (commands/data_download.py)

(``--root`` is the old, deprecated spelling of ``--data-root``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    sub.add_parser("list", help="list the known datasets, their folders and templates")

    inspect = sub.add_parser(
        "inspect", help="show the splits after few-shot sampling and base/novel subsampling"
    )
    _dataset_arguments(inspect)
    inspect.add_argument("--shots", type=int, default=-1, help="images per class in train (<= 0: all)")
    inspect.add_argument(
        "--seed", type=int, default=1, help="few-shot sampling seed (the paper uses 1, 2, 3)"
    )
    inspect.add_argument("--subsample", choices=("all", "base", "new"), default="all", help="class subset")
    inspect.add_argument(
        "--cache-dir", default=None, help="cache root (default $MMPROMPT_CACHE or ~/.cache/mmprompt)"
    )
    inspect.add_argument("--json", action="store_true", help="print classnames and splits as JSON")
    inspect.add_argument(
        "--no-official-cache",
        action="store_true",
        help="ignore <dataset>/split_fewshot/shot_K-seed_S.pkl and sample with the official algorithm",
    )

    check = sub.add_parser("check", help="check a dataset folder and explain what is missing or wrong")
    _dataset_arguments(check)
    check.add_argument("--verify-images", action="store_true", help="also decode every image (slow)")

    from .data_download import add_download_parser

    add_download_parser(sub)


def _dataset_arguments(p: argparse.ArgumentParser) -> None:
    from .grammar import add_deprecated_alias

    p.add_argument("--dataset", required=True, help="dataset name (see 'mmprompt data list'), or 'custom'")
    p.add_argument(
        "--data-root",
        dest="root",
        help="the data root that holds the dataset folders (e.g. DIR/caltech-101/); for 'custom', the dataset "
        "folder or CSV file",
    )
    add_deprecated_alias(p, "--root", "--data-root", dest="root")
    p.add_argument(
        "--classnames", default=None, help="custom datasets: class-names file (label order and names)"
    )
    p.add_argument("--split-file", default=None, help="custom datasets: a split file in CoOp's format")


def _relative_prefix(splits: Any) -> str:
    """The image folder relative to the dataset folder, as a prefix for sample paths."""
    if splits.dataset_dir is None or splits.image_dir == splits.dataset_dir:
        return ""
    return splits.image_dir.relative_to(splits.dataset_dir).as_posix() + "/"


def _inspect(args: argparse.Namespace) -> int:
    from mmprompt.data import build_dataset

    splits = build_dataset(
        args.dataset,
        args.root,
        shots=args.shots,
        seed=args.seed,
        subsample=args.subsample,
        cache_dir=args.cache_dir,
        classnames_file=args.classnames,
        split_file=args.split_file,
        use_official_cache=not args.no_official_cache,
    )
    prefix = _relative_prefix(splits)
    if args.json:
        out = {"classnames": splits.classnames}
        for name in ("train", "val", "test"):
            out[name] = [[prefix + s.path, s.label] for s in splits.split(name)]
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"dataset      {splits.name}")
    print(f"folder       {splits.dataset_dir}")
    print(f"images in    {splits.image_dir}")
    for key, value in splits.provenance.items():
        print(f"{key:<12} {value}")
    print(f"template     {splits.template!r}")
    shown = ", ".join(splits.classnames[:8]) + (", ..." if splits.num_classes > 8 else "")
    print(f"classes      {splits.num_classes}: {shown}")
    for name in ("train", "val", "test"):
        samples = splits.split(name)
        per_class = len(samples) / max(1, len({s.label for s in samples}))
        print(f"{name:<12} {len(samples)} images ({per_class:.1f} per class)")
    return 0


def _check_custom(args: argparse.Namespace) -> int:
    from mmprompt.data import build_custom_dataset
    from mmprompt.data.check import CheckReport, add_split_findings, check_split_images

    splits = build_custom_dataset(args.root, classnames_file=args.classnames, split_file=args.split_file)
    report = CheckReport("custom", splits.dataset_dir or splits.image_dir)
    by_name = {n: splits.split(n) for n in ("train", "val", "test")}
    report.notes.append(f"{splits.num_classes} classes, " + ", ".join(f"{len(v)} {k}" for k, v in by_name.items()))
    check_split_images(by_name, splits.image_dir, args.verify_images, report)
    add_split_findings(by_name, list(splits.classnames), report)
    return _print_report(report, f"custom dataset {report.dataset_dir}")


def _print_report(report: Any, title: str) -> int:
    print(title)
    for note in report.notes:
        print(f"  note: {note}")
    for warning in report.warnings:
        print(f"  WARNING: {warning}")
    for problem in report.problems:
        print(f"  PROBLEM: {problem}")
    if report.ok:
        print("OK: the dataset is ready" + (f" ({len(report.warnings)} warning(s) above)" if report.warnings else ""))
        return 0
    print(f"{len(report.problems)} problem(s) found")
    return 1


def _check(args: argparse.Namespace) -> int:
    if args.dataset.lower() == "custom":
        return _check_custom(args)
    from mmprompt.data import check_dataset

    report = check_dataset(args.dataset, args.root, verify_images=args.verify_images)
    return _print_report(report, f"{report.dataset}: {report.dataset_dir}")


def _list() -> int:
    from mmprompt.data import DATASETS, get_template

    print(f"{'name':<16} {'folder':<22} {'classes':>7}  {'split file':<38} template")
    for key, info in DATASETS.items():
        split = info.split_file or ("(test only)" if info.test_only else "(official lists)")
        print(f"{key:<16} {info.folder:<22} {info.num_classes:>7}  {split:<38} {get_template(key)}")
    print("custom           a folder of class folders, or a CSV of path,label[,split]")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.data_command != "list" and not getattr(args, "root", None):
        from ..errors import UsageError

        raise UsageError(f"data {args.data_command} needs --data-root DIR (the folder holding the datasets)")
    if args.data_command == "list":
        return _list()
    if args.data_command == "inspect":
        return _inspect(args)
    if args.data_command == "download":
        from .data_download import run_download

        return run_download(args)
    return _check(args)
