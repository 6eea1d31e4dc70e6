"""The ``mmprompt`` command line: thin subcommands over the library.

Each subcommand lives in its own module under :mod:`mmprompt.commands` and provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand runs, so ``mmprompt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand name -> (module under mmprompt.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "parity": ("parity", "check the implementation against an official reference file"),
    "data": ("data", "inspect and check datasets (inspect, check)"),
    "import-official": ("import_official", "convert an official Dassl checkpoint into an mmprompt checkpoint"),
    "train": ("train", "train prompts on one dataset"),
    "eval": ("eval", "evaluate prompts (or zero-shot CLIP) on one dataset"),
    "predict": ("predict", "classify images with trained prompts and class names given now"),
    "benchmark": ("benchmark", "run a paper protocol over datasets and seeds"),
    "reproduce": ("reproduce", "run every protocol of the paper for methods; report beside the published numbers"),
    "demo": ("demo", "run base-to-novel on the built-in offline demo world"),
    "bench": ("bench", "measure training-step time, evaluation throughput and memory"),
}


def build_parser(with_subcommands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmprompt", description="Multi-modal prompt learning on CLIP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if with_subcommands is None or name in with_subcommands:
            importlib.import_module(f"mmprompt.commands.{module}").add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([chosen] if chosen in COMMANDS else [])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"mmprompt.commands.{COMMANDS[args.command][0]}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
