"""``mmprompt demo``: the whole base-to-novel protocol on the built-in offline demo world."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .grammar import int_list

    parser.add_argument("--quick", action="store_true",
                        help="a reduced run (seed 1, CoOp 50 epochs): about 20 s on 2 CPU cores")
    parser.add_argument("--all-methods", action="store_true",
                        help="every method of the method table (the paper's 7, the successors and installed "
                        "plugins), each with its recipe scaled to the demo CLIP (default: zero-shot, CoOp, MaPLe)")
    parser.add_argument("--methods", nargs="+", default=None, help="explicit list of methods")
    int_list(parser, "--seeds", default=None, metavar="SEED", help="seeds: 1 2 3 or 1,2,3 (default 1 2 3; --quick: 1)")
    parser.add_argument("--output", default="mmprompt-demo", help="output folder (default ./mmprompt-demo)")
    parser.add_argument("--data-root", default=None, help="where to generate the demo data (default OUTPUT/data)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted overrides for every run, or METHOD:KEY=VALUE for one method")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the demo model is tiny, and one thread repeats exactly)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..demo.protocol import DEFAULT_METHODS, DEFAULT_SEEDS, QUICK_SEEDS, all_demo_methods, run_demo
    from ..protocols import format_table

    torch.set_num_threads(max(1, args.threads))
    methods = args.methods or (all_demo_methods() if args.all_methods else DEFAULT_METHODS)
    seeds = args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    start = time.perf_counter()
    print(f"mmprompt demo: base-to-novel on the demo world, methods {', '.join(methods)}, seeds "
          f"{' '.join(map(str, seeds))}{' (quick)' if args.quick else ''}; torch threads {torch.get_num_threads()}")
    results = run_demo(args.output, methods, seeds, quick=args.quick, data_root=args.data_root,
                       progress=not args.no_progress, extra_overrides=args.set)
    elapsed = time.perf_counter() - start
    print()
    print(format_table(results))
    out = Path(args.output) / "runs"
    print(f"\nresults: {out / 'results.json'} (+ .md, .csv, .png); {elapsed:.0f} s")
    return 0
