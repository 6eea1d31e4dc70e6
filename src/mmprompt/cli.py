"""The ``mmprompt`` command line: thin subcommands over the library.

Each subcommand lives in its own module under :mod:`mmprompt.commands` and provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand runs, so ``mmprompt --help`` stays fast.

Errors the user can fix are reported in a few lines with a documented exit code (see
:mod:`mmprompt.errors`); ``--debug`` or ``MMPROMPT_DEBUG=1`` shows their traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

# subcommand name -> (module under mmprompt.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "parity": ("parity", "check the implementation against an official reference file"),
    "data": ("data", "list, inspect, check and download datasets"),
    "import-official": ("import_official", "convert an official Dassl checkpoint into an mmprompt checkpoint"),
    "train": ("train", "train prompts on one dataset"),
    "eval": ("eval", "evaluate prompts (or zero-shot CLIP) on one dataset"),
    "predict": ("predict", "classify images with trained prompts and class names given now"),
    "benchmark": ("benchmark", "run a paper protocol over datasets and seeds"),
    "reproduce": ("reproduce", "run the paper's protocols for methods; report beside the published numbers"),
    "demo": ("demo", "run base-to-novel on the built-in offline demo world"),
    "weights": ("weights", "list the CLIP weights known by name (OpenAI releases, Hugging Face Hub names)"),
    "speed": ("bench", "measure training-step time, evaluation throughput and memory (alias: bench)"),
}
ALIASES: dict[str, str] = {"bench": "speed"}


def build_parser(with_subcommands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmprompt", description="Multi-modal prompt learning on CLIP.")
    from . import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (anywhere on the line)")
    parser.add_argument("--debug", action="store_true",
                        help="also show the traceback of an error, same exit code (anywhere on the line; also: "
                        "environment variable MMPROMPT_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"mmprompt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    aliases_of = {target: [a for a, t in ALIASES.items() if t == target] for target in COMMANDS}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, aliases=aliases_of[name])
        if with_subcommands is None or name in with_subcommands:
            importlib.import_module(f"mmprompt.commands.{module}").add_arguments(p)
    return parser


def _debug_env() -> bool:
    return os.environ.get("MMPROMPT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _exit_now(signum: int, frame: object) -> None:
    """A second Ctrl-C while the first is being handled (files closed, workers and threads joined at exit):
    end at once, without the traceback Python would print from the cleanup it interrupts. Every result file
    is written atomically, so nothing is left half-written."""
    from .errors import EXIT_INTERRUPTED

    try:
        sys.stderr.write("mmprompt: interrupted again; exiting now\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_INTERRUPTED)


def _exit_on_next_interrupt() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_now)


class _ProgressAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines written through ``tqdm.write``: a line never lands on a progress bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _setup_logging(verbose: bool) -> None:
    handler = _ProgressAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (see :mod:`mmprompt.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # accepted anywhere on the line, also after the subcommand (no subcommand has options of these names)
    debug_flag = "--debug" in argv
    verbose_flag = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("--debug", "-v", "--verbose")]
    chosen = next((a for a in argv if not a.startswith("-")), None)
    chosen = ALIASES.get(chosen, chosen)
    parser = build_parser([chosen] if chosen in COMMANDS else [])
    args = parser.parse_args(argv)
    _setup_logging(verbose_flag)
    if args.command is None:
        parser.print_help()
        return 2
    debug = debug_flag or _debug_env()
    try:
        module = importlib.import_module(f"mmprompt.commands.{COMMANDS[ALIASES.get(args.command, args.command)][0]}")
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        _exit_on_next_interrupt()
        if debug:
            traceback.print_exc()
        print("mmprompt: interrupted", file=sys.stderr)
        from .errors import EXIT_INTERRUPTED

        return EXIT_INTERRUPTED
    except Exception as exc:
        from .errors import classify_error

        info = classify_error(exc)
        if info is None:
            raise
        if debug:  # the traceback too, and the same exit code as without --debug
            traceback.print_exc()
        print(f"mmprompt {args.command}: error ({info.category}): {info.message}", file=sys.stderr)
        if not debug:
            print("(run with --debug or MMPROMPT_DEBUG=1 for the traceback)", file=sys.stderr)
        return info.code


if __name__ == "__main__":
    sys.exit(main())
