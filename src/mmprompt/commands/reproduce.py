"""``mmprompt reproduce``: every protocol of the paper for the chosen methods, and one report beside the
published numbers.

    mmprompt reproduce maple --dry-run
    mmprompt reproduce maple-table --data-root /data --clip ViT-B/16 --output repro --launcher ray
    mmprompt reproduce maple --datasets mmprompt_demo --data-root demo-data --clip demo --output repro-demo

Runs already finished are skipped; the report is ``<output>/report.{md,json}``, each protocol's results
``<output>/<protocol>/results.*``. The exit code is 1 when a run failed for good.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import UsageError
from .benchmark import add_launcher_arguments, launch_options
from .grammar import int_list, protocol_name

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("methods", nargs="+", metavar="METHOD",
                        help="methods (maple, coop, ...; maple-table: the 7 methods of MaPLe's base-to-novel table)")
    parser.add_argument("--data-root", help="folder holding the datasets (not needed with --dry-run)")
    parser.add_argument("--clip", help="CLIP weights: ViT-B/16 (the paper's), a path, or demo")
    parser.add_argument("--clip-activation", choices=("quick_gelu", "gelu"), help="for a CLIP given as a file")
    parser.add_argument("--output", default="mmprompt-reproduce", help="output folder (default ./mmprompt-reproduce)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                        help="only these datasets (default: the paper's 11, and the 4 ImageNet variants)")
    parser.add_argument("--protocols", nargs="+", type=protocol_name, default=None, metavar="PROTOCOL",
                        help="base2novel (base-to-novel) cross-dataset domain-generalization "
                        "(domain-generalisation) few-shot (default: those with published numbers for the methods)")
    int_list(parser, "--seeds", default=[1, 2, 3], metavar="SEED", help="seeds: 1 2 3 or 1,2,3 (default 1 2 3)")
    int_list(parser, "--shots", default=[16], metavar="K",
             help="images per class (default 16, the published numbers'; a few-shot curve over several counts is "
             "'mmprompt benchmark few-shot --shots 1 2 4 8 16')")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted overrides for every run, or METHOD:KEY=VALUE for one method")
    parser.add_argument("--descriptions", metavar="DIR",
                        help="class descriptions for the methods that read them (MMA++): a folder of <dataset>.json "
                        "files (JSON {class name: [sentence, ...]}), or one JSON file for every dataset")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda...")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and the estimated GPU hours; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_launcher_arguments(parser)


def descriptions_override(path: str | None) -> list[str]:
    """``--descriptions`` as the override ``data.descriptions=ABSOLUTE PATH`` (none without it)."""
    if not path:
        return []
    import json
    from pathlib import Path

    return [f"data.descriptions={json.dumps(str(Path(path).absolute()))}"]


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..protocols.reproduce import format_dry_run, plan_reproduce, run_reproduce

    if not args.dry_run and (not args.clip or not args.data_root):
        raise UsageError("--clip and --data-root are needed (or --dry-run)")
    if len(args.shots) > 1:
        raise UsageError(f"reproduce runs one shot count (the published numbers are 16-shot), got "
                         f"{' '.join(map(str, args.shots))}; for a curve: mmprompt benchmark few-shot --shots ...")
    try:
        launch = launch_options(args)
        plan = plan_reproduce(
            args.methods, args.data_root or ".", args.clip or "ViT-B/16", args.output, datasets=args.datasets,
            seeds=args.seeds, protocols=args.protocols,
            overrides=[*args.overrides, *descriptions_override(args.descriptions)],
            shots=args.shots[0], clip_activation=args.clip_activation, device=args.device,
        )
    except (ValueError, KeyError, ConfigError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise UsageError(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)) from None
    if args.dry_run:
        print(format_dry_run(plan), end="")
        return 0
    from ..protocols.launch import LaunchError

    try:
        report = run_reproduce(plan, args.clip, args.clip_activation, launch=launch)
    except LaunchError as exc:
        raise UsageError(str(exc)) from None
    print((plan.output / "report.md").read_text(encoding="utf-8"), end="")
    print(f"\nreport: {plan.output / 'report.md'} (+ report.json); results per protocol in {plan.output}/<protocol>/")
    return 1 if report["failed"] else 0
