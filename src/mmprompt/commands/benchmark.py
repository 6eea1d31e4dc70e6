"""``mmprompt benchmark``: run a paper protocol over methods, datasets and seeds.

    mmprompt benchmark base2novel --method maple --datasets eurosat dtd --seeds 1 2 3 \\
        --data-root /data --clip ViT-B/16 --output sweeps/b2n
    mmprompt benchmark cross-dataset --method maple --seeds 1 2 3 --data-root /data --clip ViT-B/16 --output sweeps/xd
    mmprompt benchmark domain-generalization --method maple --source-runs sweeps/xd ... --output sweeps/dg

Finished runs are skipped, so an interrupted sweep is continued by running the same command again.
Results: ``<output>/results.{json,md,csv,png}``. ``--launcher ray`` runs each (method, dataset, seed) run as
a Ray task (a local cluster, or ``--ray-address``); runs that still fail after ``--max-retries`` are listed
with their cause and make the exit code 1.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .grammar import int_list, protocol_name
from .train import add_config_arguments

logger = logging.getLogger(__name__)

PROTOCOLS = ("base2novel", "cross-dataset", "domain-generalization", "few-shot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", type=protocol_name, metavar="PROTOCOL",
                        help="base2novel (base-to-novel), cross-dataset, domain-generalization "
                        "(domain-generalisation) or few-shot")
    add_config_arguments(parser, with_method=False, shots_list=True)
    parser.add_argument("--method", nargs="+", action="extend", dest="methods", default=[], metavar="METHOD",
                        help="methods to run (default: the --config's method)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                        help="datasets (cross-dataset / domain generalisation: the targets; default: the paper's)")
    int_list(parser, "--seeds", default=[1, 2, 3], metavar="SEED", help="seeds: 1 2 3 or 1,2,3 (default 1 2 3)")
    parser.add_argument("--output", required=True, help="sweep folder")
    parser.add_argument("--source", default="imagenet", help="source dataset of the transfer protocols")
    parser.add_argument("--source-runs", help="sweep folder holding already trained source runs (transfer)")
    add_launcher_arguments(parser)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and its options (shared by the sweep commands)."""
    g = parser.add_argument_group("launcher")
    g.add_argument("--launcher", choices=("sequential", "ray"), default="sequential",
                   help="sequential: one run after another in this process (default); ray: one Ray task per run")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="Ray cluster to join (default: start a local one on 127.0.0.1)")
    g.add_argument("--ray-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to keep trying to reach --ray-address before giving up (default 60)")
    g.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs per run, fractional packs runs on a GPU, e.g. 0.25 (default: 1 if the cluster has GPUs)")
    g.add_argument("--cpus-per-run", type=float, default=1.0,
                   help="CPUs per run: its main process and data-loader workers (default 1)")
    g.add_argument("--max-retries", type=int, default=1, help="attempts after the first for a failed run (default 1)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: sequential keeps torch's; ray: --cpus-per-run)")
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) in every run")


def launch_options(args: argparse.Namespace) -> Any:
    """The :class:`~mmprompt.protocols.launch.LaunchOptions` of the parsed arguments."""
    from ..protocols.launch import LaunchOptions

    return LaunchOptions(
        launcher=args.launcher, ray_address=args.ray_address, ray_timeout=args.ray_timeout,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run, max_retries=args.max_retries, threads=args.threads,
        deterministic=args.deterministic, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        from .train import list_presets_text

        print(list_presets_text())
        return 0
    from ..config import load_config, parse_override
    from ..engine.distributed import init_distributed
    from ..methods import method_variant
    from ..protocols import format_table, run_protocol
    from ..protocols.launch import LaunchError
    from .train import quiet_other_ranks, shortcut_overrides

    presets: dict[str, str] = {}
    methods = [method_variant(m) for m in args.methods]
    if args.config:
        preset_method = load_config(args.config).method.name
        presets[preset_method] = args.config
        methods = methods or [preset_method]
    if not methods:
        raise UsageError("give --method (one or more) or --config")
    if not args.clip or not args.data_root:
        raise UsageError("--clip and --data-root are needed")
    extra = shortcut_overrides(args)
    if "clip.config" in extra or "clip.architecture" in extra:
        raise UsageError("--clip-config / --clip-arch apply to train, eval and predict; a sweep loads its CLIP "
                         "once from --clip: give bare weights a folder with their config.json beside them")
    for key in ("clip.weights", "clip.activation", "data.root", "data.shots", "output", "device"):
        extra.pop(key, None)  # passed as the protocol's own arguments
    overrides = {**dict(parse_override(o) for o in args.overrides), **extra}
    try:
        launch = launch_options(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    shots = list(args.shots or [16])
    if len(shots) > 1 and args.protocol != "few-shot":
        raise UsageError(f"several --shots ({' '.join(map(str, shots))}) are for the few-shot protocol; "
                         f"{args.protocol} takes one")
    ctx = init_distributed(args.device or "auto")
    quiet_other_ranks(ctx)
    common = dict(
        presets=presets, overrides=overrides, progress=not args.no_progress,
        shots=shots if len(shots) > 1 else shots[0],
        clip_activation=args.clip_activation, device=args.device or "auto", ctx=ctx, launch=launch,
    )
    if args.protocol in ("base2novel", "few-shot") and not args.datasets:
        raise UsageError(f"--datasets is needed for {args.protocol}")
    try:
        results = run_protocol(args.protocol, methods, args.datasets or (), args.seeds, args.data_root, args.clip,
                               args.output, source=args.source, source_runs=args.source_runs, **common)
    except LaunchError as exc:
        raise UsageError(str(exc)) from None
    if ctx.is_main:
        print(format_table(results, with_std=True))
        written = ",".join(k for k in ("json", "md", "csv", "png") if (Path(args.output) / f"results.{k}").is_file())
        print(f"results in {args.output}/results.{{{written}}}")
    return 1 if results.get("failed") else 0
