"""``mmprompt predict``: classify images among class names given now.

    mmprompt predict --checkpoint runs/maple/eurosat --classes "forest,river,sea or lake" a.jpg b.jpg
    mmprompt predict --method zeroshot --clip ViT-B/16 --classes @names.txt --top-k 3 --json *.jpg

``--classes`` is a comma-separated list, or ``@FILE`` with one name per line (default: the classes the
prompts were trained on).
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", help="a prompt checkpoint folder")
    parser.add_argument("--method", help="'zeroshot' to use CLIP without prompts (needs --clip)")
    parser.add_argument("--template", action="append", metavar="TEXT",
                        help="zero-shot template(s) with {} for the class (default 'a photo of a {}.')")
    parser.add_argument("--classes", help="comma-separated class names, or @FILE with one per line")
    parser.add_argument("--clip", metavar="WEIGHTS", help="CLIP weights (default: those recorded in the checkpoint)")
    parser.add_argument("--clip-activation", choices=("quick_gelu", "gelu"))
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")


def parse_classes(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``"@file"`` -> the file's non-empty lines."""
    from pathlib import Path

    if text.startswith("@"):
        names = [line.strip() for line in Path(text[1:]).read_text(encoding="utf-8").splitlines()]
    else:
        names = [part.strip() for part in text.split(",")]
    return [n for n in names if n]


def run(args: argparse.Namespace) -> int:
    import json

    from ..engine.distributed import resolve_device
    from ..methods import canonical_method
    from ..predict import Predictor

    zero_shot = args.method is not None and canonical_method(args.method) == "zeroshot"
    if zero_shot == (args.checkpoint is not None):
        logger.error("give either --checkpoint DIR or --method zeroshot (with --clip)")
        return 2
    classes = parse_classes(args.classes) if args.classes else None
    device = resolve_device(args.device)
    if zero_shot:
        if not args.clip or not classes:
            logger.error("--method zeroshot needs --clip WEIGHTS and --classes")
            return 2
        predictor = Predictor.zero_shot(args.clip, classes, args.template or ["a photo of a {}."], device,
                                        clip_activation=args.clip_activation, precision=args.precision)
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, clip=args.clip, device=device,
                                              clip_activation=args.clip_activation, precision=args.precision)
        if classes:
            predictor.set_classes(classes)
    results = predictor.predict(args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": str(img), "predictions": [{"class": n, "probability": p} for n, p in preds]}
                          for img, preds in zip(args.images, results, strict=True)], indent=2))
    else:
        for img, preds in zip(args.images, results, strict=True):
            print(img)
            for name, prob in preds:
                print(f"  {prob:7.2%}  {name}")
    return 0
