"""``mmprompt benchmark``: run a paper protocol over methods, datasets and seeds.

    mmprompt benchmark base2novel --method maple --datasets eurosat dtd --seeds 1 2 3 \\
        --data-root /data --clip ViT-B/16 --output sweeps/b2n
    mmprompt benchmark cross-dataset --method maple --seeds 1 2 3 --data-root /data --clip ViT-B/16 --output sweeps/xd
    mmprompt benchmark domain-generalization --method maple --source-runs sweeps/xd ... --output sweeps/dg

Finished runs are skipped, so an interrupted sweep is continued by running the same command again.
Results: ``<output>/results.{json,md,csv,png}``.
"""

from __future__ import annotations

import argparse
import logging

from .train import add_config_arguments

logger = logging.getLogger(__name__)

PROTOCOLS = ("base2novel", "cross-dataset", "domain-generalization", "few-shot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", choices=PROTOCOLS)
    add_config_arguments(parser, with_method=False)
    parser.add_argument("--method", nargs="+", action="extend", dest="methods", default=[], metavar="METHOD",
                        help="methods to run (default: the --config's method)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                        help="datasets (cross-dataset / domain generalisation: the targets; default: the paper's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--output", required=True, help="sweep folder")
    parser.add_argument("--source", default="imagenet", help="source dataset of the transfer protocols")
    parser.add_argument("--source-runs", help="sweep folder holding already trained source runs (transfer)")


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        from .train import list_presets_text

        print(list_presets_text())
        return 0
    from ..config import load_config, parse_override
    from ..engine.distributed import init_distributed
    from ..methods import canonical_method
    from ..protocols import format_table, run_base2novel, run_few_shot, run_transfer
    from ..protocols.transfer import CROSS_DATASET_TARGETS, DG_TARGETS
    from .train import quiet_other_ranks, shortcut_overrides

    presets: dict[str, str] = {}
    methods = [canonical_method(m) for m in args.methods]
    if args.config:
        preset_method = load_config(args.config).method.name
        presets[preset_method] = args.config
        methods = methods or [preset_method]
    if not methods:
        logger.error("give --method (one or more) or --config")
        return 2
    if not args.clip or not args.data_root:
        logger.error("--clip and --data-root are needed")
        return 2
    extra = shortcut_overrides(args)
    for key in ("clip.weights", "clip.activation", "data.root", "data.shots", "output", "device"):
        extra.pop(key, None)  # passed as the protocol's own arguments
    overrides = {**dict(parse_override(o) for o in args.overrides), **extra}
    ctx = init_distributed(args.device or "auto")
    quiet_other_ranks(ctx)
    common = dict(
        presets=presets, overrides=overrides, progress=not args.no_progress, shots=args.shots or 16,
        clip_activation=args.clip_activation, device=args.device or "auto", ctx=ctx,
    )
    if args.protocol == "base2novel":
        if not args.datasets:
            logger.error("--datasets is needed for base2novel")
            return 2
        results = run_base2novel(methods, args.datasets, args.seeds, args.data_root, args.clip, args.output, **common)
    elif args.protocol == "few-shot":
        if not args.datasets:
            logger.error("--datasets is needed for few-shot")
            return 2
        results = run_few_shot(methods, args.datasets, args.seeds, args.data_root, args.clip, args.output, **common)
    else:
        default = CROSS_DATASET_TARGETS if args.protocol == "cross-dataset" else DG_TARGETS
        results = run_transfer(args.protocol, methods, args.datasets or default, args.seeds, args.data_root,
                               args.clip, args.output, source=args.source, source_runs=args.source_runs, **common)
    if ctx.is_main:
        print(format_table(results, with_std=True))
        print(f"results in {args.output}/results.{{json,md,csv,png}}")
    return 0
