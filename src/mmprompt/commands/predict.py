"""``mmprompt predict``: classify images among class names given now.

    mmprompt predict --checkpoint runs/maple/eurosat --classes "forest,river,sea or lake" a.jpg b.jpg
    mmprompt predict --method zeroshot --clip ViT-B/16 --classes @names.txt --top-k 3 --json *.jpg

``--classes`` is a comma-separated list, or ``@FILE`` with one name per line (``#`` starts a comment;
default: the classes the prompts were trained on; an empty list is an error). An unreadable image is
reported and the others are predicted; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .train import add_clip_description_arguments, add_torchscript_argument

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
    parser.add_argument("--path", metavar="PATH",
                        help="inference path of a method that has several (MMRL: base | novel; default: base with the "
                             "trained classes, novel with other --classes)")
    from .train import add_teacher_argument

    add_teacher_argument(parser)
    add_clip_description_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images decoded and classified at a time (default 64; lower it on little memory)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--descriptions", metavar="FILE", help="class descriptions for methods that read them "
                        "(MMA++ cupl): JSON {class name: [sentence, ...]} (default: those saved with the prompts)")
    add_torchscript_argument(parser)


def parse_classes(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``"@file"`` -> the file's lines, without blank and ``#`` comment lines.

    An empty list is an error (it would otherwise mean "the trained classes" silently).
    """
    from pathlib import Path

    from ..config import ConfigError

    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise ConfigError(f"--classes {text}: {path} is not UTF-8 text (byte offset {e.start})") from None
        names = [ln.strip() for ln in lines if not ln.strip().startswith("#")]
        where = f"{path} (one class per line; # starts a comment)"
    else:
        names = [part.strip() for part in text.split(",")]
        where = f"--classes {text!r} (comma-separated names)"
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no class names in {where}; leave --classes out to use the trained classes")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"class names given twice in {where}: {', '.join(dup)}")
    return names


def run(args: argparse.Namespace) -> int:
    import json

    from ..data.errors import CorruptImageError
    from ..data.images import load_image
    from ..engine.distributed import resolve_device
    from ..errors import EXIT_FAILED, UsageError, raise_if_out_of_memory
    from ..methods import canonical_method
    from ..predict import Predictor

    zero_shot = args.method is not None and canonical_method(args.method) == "zeroshot"
    if zero_shot == (args.checkpoint is not None):
        raise UsageError("give either --checkpoint DIR or --method zeroshot (with --clip)")
    if args.path is not None:
        if zero_shot:
            logger.error("--path %s: zero-shot CLIP has a single inference path", args.path)
            return 2
        from .eval import unknown_path_error

        error = unknown_path_error(args.checkpoint, args.path)
        if error:
            logger.error("%s", error)
            return 2
    classes = parse_classes(args.classes) if args.classes is not None else None
    device = resolve_device(args.device)
    if zero_shot:
        if not args.clip or not classes:
            raise UsageError("--method zeroshot needs --clip WEIGHTS and --classes")
        predictor = Predictor.zero_shot(args.clip, classes, args.template or ["a photo of a {}."], device,
                                        clip_activation=args.clip_activation, precision=args.precision,
                                        allow_torchscript=args.allow_torchscript, clip_config=args.clip_config,
                                        clip_architecture=args.clip_arch)
    else:
        from ..checkpoint import check_method_matches, read_prompt_meta

        check_method_matches(read_prompt_meta(args.checkpoint), args.method, args.checkpoint)
        if (args.clip_config or args.clip_arch) and not args.clip:
            raise UsageError("--clip-config / --clip-arch describe the weights given with --clip")
        predictor = Predictor.from_checkpoint(args.checkpoint, clip=args.clip, device=device,
                                              clip_activation=args.clip_activation, precision=args.precision,
                                              allow_torchscript=args.allow_torchscript, teacher=args.teacher,
                                              teacher_clip=args.teacher_clip,
                                              clip_config=args.clip_config, clip_architecture=args.clip_arch)
        if classes or args.descriptions:
            predictor.set_classes(classes, descriptions=args.descriptions)
        predictor.path = args.path
        if predictor.current_path():
            logger.info("inference path: %s", predictor.current_path())
    if args.batch_size < 1:
        logger.error("--batch-size must be >= 1, got %d", args.batch_size)
        return 2
    predictor.batch_size = args.batch_size
    predicted, errors = {}, {}
    for start in range(0, len(args.images), args.batch_size):  # decoded one batch at a time, never all at once
        loaded = {}
        for i in range(start, min(start + args.batch_size, len(args.images))):
            try:  # one bad file is reported; the others are predicted
                loaded[i] = load_image(args.images[i])
            except CorruptImageError as e:
                errors[i] = str(e)
        if not loaded:
            continue
        try:
            found = predictor.predict(list(loaded.values()), top_k=args.top_k)
        except (MemoryError, RuntimeError) as exc:
            raise_if_out_of_memory(exc, f"classifying a batch of {len(loaded)} images on {device}",
                                   f"--batch-size (now {args.batch_size})")
            raise
        predicted.update(zip(loaded, found, strict=True))
    if args.json:
        print(json.dumps([{"image": str(img), "error": errors[i]} if i in errors else
                          {"image": str(img), "predictions": [{"class": n, "probability": p} for n, p in predicted[i]]}
                          for i, img in enumerate(args.images)], indent=2))
    else:
        for i, img in enumerate(args.images):
            print(img)
            if i in errors:
                print(f"  error: {errors[i]}")
                continue
            for name, prob in predicted[i]:
                print(f"  {prob:7.2%}  {name}")
    if errors:
        print(f"mmprompt predict: error (data): {len(errors)} of {len(args.images)} image(s) could not be read; "
              "the others were predicted", file=sys.stderr)
        return EXIT_FAILED
    return 0
