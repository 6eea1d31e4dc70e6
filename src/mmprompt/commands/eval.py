"""``mmprompt eval``: evaluate saved prompts (or zero-shot CLIP) on a dataset's test split.

    mmprompt eval --checkpoint runs/maple/eurosat --dataset eurosat --data-root /data --subsample new
    mmprompt eval --method zeroshot --clip ViT-B/16 --dataset dtd --data-root /data

The CLIP is the one recorded in the checkpoint unless ``--clip`` is given. The prompts are pointed at the
evaluated classes (``--subsample base|new|all``), so base-trained prompts can be tested on novel classes.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import UsageError
from .train import (
    add_clip_description_arguments,
    add_custom_data_arguments,
    add_descriptions_argument,
    add_teacher_argument,
    add_threads_argument,
    add_torchscript_argument,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a prompt checkpoint folder (prompts.json + prompts.safetensors)")
    parser.add_argument("--method", help="'zeroshot' to evaluate CLIP without prompts (needs --clip)")
    parser.add_argument("--template", action="append", metavar="TEXT",
                        help="zero-shot template(s) with {} for the class (default: the dataset's own)")
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument("--data-root", required=True, help="folder holding the datasets")
    parser.add_argument("--subsample", choices=("all", "base", "new"), default="all",
                        help="which classes to evaluate on (default all)")
    parser.add_argument("--path", metavar="PATH",
                        help="inference path of a method that has several (MMRL: base | novel; default: base on the "
                             "classes the prompts were trained on, novel on any other classes or dataset)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the dataset's few-shot selection (default 1)")
    parser.add_argument("--clip", metavar="WEIGHTS", help="CLIP weights (default: those recorded in the checkpoint)")
    parser.add_argument("--clip-activation", choices=("quick_gelu", "gelu"))
    add_teacher_argument(parser)
    add_clip_description_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=100, help="test batch size (default 100)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loader workers (default: what the "
                        "machine has)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="leave unreadable images out (listed, and recorded in the --output metrics)")
    parser.add_argument("--output", metavar="FILE", help="also write the metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    add_descriptions_argument(parser)
    add_threads_argument(parser)
    add_custom_data_arguments(parser)
    add_torchscript_argument(parser)


def unknown_path_error(checkpoint: str, path: str) -> str | None:
    """The one-line error for ``--path`` naming a path the checkpoint's method does not have (None: it has it)."""
    from ..checkpoint import read_prompt_meta
    from ..methods import get_method

    method = read_prompt_meta(checkpoint)["method"]
    paths = get_method(method).learner.inference_paths
    if path in paths:
        return None
    known = f"its paths: {', '.join(paths)}" if paths else "it has a single inference path"
    return f"--path {path}: {method} (checkpoint {checkpoint}) has no inference path {path!r}; {known}"


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..checkpoint import check_method_matches, load_prompts, read_prompt_meta, warn_if_other_weights
    from ..config import RunConfig
    from ..data import build_dataset
    from ..data.preflight import check_run_images
    from ..engine.clip_source import load_clip_from_info, resolve_clip
    from ..engine.distributed import init_distributed
    from ..engine.run import dataset_context, evaluate_split
    from ..engine.teacher import teacher_for_checkpoint
    from ..fileio import atomic_write_json
    from ..methods import canonical_method, create_learner
    from .train import apply_threads, quiet_other_ranks

    apply_threads(args.threads)
    zero_shot = args.method is not None and canonical_method(args.method) == "zeroshot"
    if zero_shot == (args.checkpoint is not None):
        raise UsageError("give either --checkpoint DIR or --method zeroshot (with --clip)")
    if zero_shot and args.path is not None:
        logger.error("--path %s: zero-shot CLIP has a single inference path", args.path)
        return 2
    if args.checkpoint is not None and args.path is not None:
        error = unknown_path_error(args.checkpoint, args.path)
        if error:
            logger.error("%s", error)
            return 2
    if zero_shot and not args.clip:
        raise UsageError("--method zeroshot needs --clip WEIGHTS")
    meta = read_prompt_meta(args.checkpoint) if args.checkpoint else None
    if meta is not None:
        check_method_matches(meta, args.method, args.checkpoint)
    ctx = init_distributed(args.device)
    quiet_other_ranks(ctx)
    if args.clip:
        clip, info = resolve_clip(args.clip, args.clip_activation, ctx.device, allow_torchscript=args.allow_torchscript,
                                  config=args.clip_config, architecture=args.clip_arch)
        if meta is not None:
            warn_if_other_weights(meta, info, args.checkpoint)
    elif args.clip_config or args.clip_arch:
        raise UsageError("--clip-config / --clip-arch describe the weights given with --clip")
    else:
        info = read_prompt_meta(args.checkpoint).get("clip") or {}
        clip = load_clip_from_info(info, device=ctx.device)
    custom = {"classnames_file": args.classnames, "split_file": args.split_file} if args.dataset == "custom" else {}
    if args.dataset != "custom" and (args.classnames or args.split_file):
        raise UsageError("--classnames and --split-file apply to --dataset custom only")
    splits = build_dataset(args.dataset, args.data_root, shots=0, seed=args.seed, subsample=args.subsample, **custom)
    _, checked, data_check = check_run_images(splits, {"test": splits}, check_train=False,
                                              skip_corrupt=args.skip_corrupt, write_cache=ctx.is_main)
    splits = checked["test"]
    method = "zeroshot" if zero_shot else read_prompt_meta(args.checkpoint)["method"]
    cfg = RunConfig.from_dict({
        "precision": args.precision, "eval_batch_size": args.batch_size,
        "data": {"num_workers": args.num_workers, "skip_corrupt": args.skip_corrupt,
                 "descriptions": args.descriptions},
        "method": {"name": method},
    })
    if zero_shot:
        templates = args.template or [splits.template]
        learner = create_learner("zeroshot", clip, splits.classnames, {"templates": templates})
    else:
        teacher = teacher_for_checkpoint(args.checkpoint, clip, list(splits.classnames), args.teacher,
                                         args.teacher_clip)
        learner = load_prompts(args.checkpoint, clip, classnames=splits.classnames,
                               dataset=dataset_context(splits, cfg), teacher=teacher)
        method = learner.method
    learner = learner.to(ctx.device)
    result = evaluate_split(learner, splits, cfg, ctx, progress=not args.no_progress,
                            desc=f"{splits.name} {args.subsample}", path=args.path)
    metrics = {"method": method, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
               "dataset": splits.name, "subsample": args.subsample, "clip": info, **result.to_dict(), "data_check": data_check}
    if ctx.is_main:
        via = f", {result.path} path" if result.path else ""
        print(f"{splits.name} ({args.subsample}, {learner.num_classes} classes{via}): top-1 {result.accuracy:.2f}% "
              f"({result.correct}/{result.total}), mean per-class {result.mean_per_class_accuracy:.2f}%")
        if args.output:
            atomic_write_json(Path(args.output), json.loads(json.dumps(metrics, default=str)))
    return 0
