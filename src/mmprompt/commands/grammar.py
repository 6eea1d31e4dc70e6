"""One command-line grammar for every subcommand: list values, protocol names and deprecated spellings.

* ``--seeds 1 2 3`` and ``--seeds 1,2,3`` (and ``--shots 1 2 4 8 16``) are the same list;
* the protocols are named as in the README, with or without hyphens, in British or American spelling
  (``base2novel`` = ``base-to-novel``, ``domain-generalization`` = ``domain-generalisation``);
* an old option spelling (``data --root``, ``speed --weights``...) still works and prints one warning line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["PROTOCOL_NAMES", "DeprecatedAlias", "add_deprecated_alias", "int_list", "protocol_name"]

PROTOCOL_NAMES: dict[str, str] = {
    "base2novel": "base2novel", "base-to-novel": "base2novel", "base2new": "base2novel",
    "base-to-new": "base2novel", "b2n": "base2novel",
    "cross-dataset": "cross-dataset", "crossdataset": "cross-dataset", "xd": "cross-dataset",
    "domain-generalization": "domain-generalization", "domain-generalisation": "domain-generalization",
    "dg": "domain-generalization",
    "few-shot": "few-shot", "fewshot": "few-shot",
}
"""Every accepted spelling of a protocol -> its canonical name (the folder and results name)."""


def protocol_name(text: str) -> str:
    """The canonical protocol name of ``text`` (argparse ``type=``): an unknown name lists the choices."""
    key = text.strip().lower().replace("_", "-")
    if key in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[key]
    choices = sorted(set(PROTOCOL_NAMES.values()))
    raise argparse.ArgumentTypeError(f"unknown protocol {text!r}: choose from {', '.join(choices)} "
                                     "(also base-to-novel, domain-generalisation)")


class IntList(argparse.Action):
    """``nargs='+'`` integers that also accept commas: ``--seeds 1 2 3`` = ``--seeds 1,2,3`` = ``--seeds 1, 2,3``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        items = [values] if isinstance(values, str) else list(values or [])
        out: list[int] = []
        for item in items:
            for part in str(item).split(","):
                if not part.strip():
                    continue
                try:
                    out.append(int(part))
                except ValueError:
                    parser.error(f"argument {option_string}: invalid integer {part.strip()!r} in {item!r} "
                                 "(give integers separated by spaces or commas, e.g. 1 2 3 or 1,2,3)")
        if not out:
            parser.error(f"argument {option_string}: give at least one integer")
        setattr(namespace, self.dest, out)


def int_list(parser: argparse.ArgumentParser | Any, *flags: str, **kwargs: Any) -> None:
    """Add an integer-list option (``--seeds``, ``--shots``) that accepts spaces and commas."""
    parser.add_argument(*flags, nargs="+", action=IntList, **kwargs)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's destination and warns once."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", nargs: Any = None,
                 **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        if self.nargs in ("+", "*") and isinstance(getattr(namespace, self.dest, None), list):
            setattr(namespace, self.dest, [*getattr(namespace, self.dest), *values])
        else:
            setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser | Any, old: str, new: str, dest: str,
                         nargs: Any = None) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (same destination, one warning line)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, nargs=nargs, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
