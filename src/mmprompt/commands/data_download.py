"""``mmprompt data download``: get the benchmark's datasets, with their split files, into a data root.

mmprompt data download all --data-root DIR --dry-run
mmprompt data download caltech101 dtd --data-root DIR
mmprompt data download imagenet --data-root DIR --from-archive FOLDER_WITH_THE_ILSVRC2012_TARS
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_download_parser(sub: Any) -> None:
    """Register ``download`` under ``mmprompt data``."""
    p = sub.add_parser(
        "download",
        help="download datasets with their split files (resumable, verified)",
        description="Download the benchmark's datasets into their official layouts, with CoOp's split files. "
        "Downloads resume after an interruption and are verified against their published checksums; each "
        "dataset appears in its folder in one step once complete, and is then checked.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="dataset names (see 'mmprompt data list'), or 'all'")
    from .grammar import add_deprecated_alias

    p.add_argument("--data-root", dest="root",
                   help="the folder that holds the dataset folders (created if needed)")
    add_deprecated_alias(p, "--root", "--data-root", dest="root")
    p.add_argument("--dry-run", action="store_true",
                   help="list the files, sizes, hosts and disk space needed; download nothing")
    p.add_argument("--from-archive", default=None, metavar="PATH",
                   help="a file, or a folder of files, you downloaded yourself (ImageNet's ILSVRC2012 tarballs, "
                   "or any dataset whose host is down); used instead of downloading them")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the downloaded archives (in DATA_ROOT/.mmprompt-download/) after extraction")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_download(args: argparse.Namespace) -> int:
    from mmprompt.commands.data import _print_report
    from mmprompt.data.check import check_dataset
    from mmprompt.data.download import (
        download_datasets,
        format_plan,
        plan_downloads,
        prepare_root,
        resolve_names,
    )

    keys = resolve_names(args.names)
    from_archive = Path(args.from_archive).expanduser() if args.from_archive else None
    if from_archive is not None and not from_archive.exists():
        from mmprompt.data.errors import DataError

        raise DataError(f"--from-archive {from_archive}: no such file or folder")
    if args.dry_run:
        root = Path(args.root).expanduser().absolute()
        if root.exists() and not root.is_dir():
            from mmprompt.data.errors import DataError

            raise DataError(f"the data root {root} is a file; expected a folder (it holds one folder per dataset)")
        print(format_plan(plan_downloads(keys, root, from_archive), root))
        return 0
    root = prepare_root(args.root)
    print(format_plan(plan_downloads(keys, root, from_archive), root), flush=True)
    failed = []

    def checked(plan: Any, folder: Path) -> None:
        report = check_dataset(plan.info.key, root)
        if _print_report(report, f"{report.dataset}: {report.dataset_dir}") != 0:
            failed.append(plan.info.key)

    download_datasets(keys, root, from_archive, progress=not args.no_progress, keep_archives=args.keep_archives,
                      on_done=checked)
    if failed:
        print(f"downloaded, but 'mmprompt data check' found problems in: {', '.join(failed)}")
        return 1
    print(f"done: {', '.join(keys)} in {root}")
    return 0
