"""``mmprompt import-official``: convert an official (Dassl) checkpoint into an mmprompt checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="the official output folder holding <name>/model.pth.tar-<epoch> "
                        "(CLIP-LoRA: its lora_weights.pt file, or a folder holding it)")
    from ..methods import all_methods

    importable = [name for name, spec in all_methods().items() if spec.official_folders or spec.official_reader]
    parser.add_argument("--method", required=True, choices=importable, help="the method the checkpoint was trained with")
    parser.add_argument("-o", "--output", required=True, help="folder for the mmprompt prompt checkpoint")
    parser.add_argument("--epoch", type=int, default=None, help="epoch to import (default: the last one)")
    parser.add_argument("--arch", default="ViT-B/16", help="CLIP architecture the prompts were trained on")
    parser.add_argument("--clip-name", default=None, help="name or path of the CLIP weights, recorded in the checkpoint")
    parser.add_argument("--best", action="store_true",
                        help="import model-best.pth.tar (a TEST.FINAL_MODEL best_val run, e.g. PromptKD's reported model)")
    parser.add_argument("--teacher-arch", default="ViT-L/14",
                        help="distilling methods (promptkd): the teacher's CLIP architecture, which fixes the student's "
                        "projector width (default ViT-L/14); pass the teacher itself with --teacher to eval/predict")
    parser.add_argument("--classnames", default=None,
                        help="class names the prompts were trained on: comma-separated, or a file with one per line")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="method options the tensors do not fix (e.g. ctx_init='a photo of a')")


def parse_classnames(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [c.strip() for c in value.split(",") if c.strip()]


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..clip.config import get_config
    from ..official import import_official

    overrides = {}
    for item in args.set:
        if "=" not in item:
            from ..errors import UsageError

            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    out = import_official(
        args.directory,
        args.method,
        args.output,
        clip_config=get_config(args.arch),
        classnames=parse_classnames(args.classnames),
        epoch=args.epoch,
        config=overrides,
        clip_info={"name": args.clip_name or args.arch},
        best=args.best,
        teacher_arch=args.teacher_arch,
    )
    print(f"wrote {out}")
    return 0
