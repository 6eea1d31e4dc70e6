"""``mmprompt parity``: compare against an official reference file."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, help="reference .npz (its .json must sit beside it)")
    parser.add_argument("--case", action="append", default=None, help="check only this case (repeatable)")
    parser.add_argument("--text-chunk-size", type=int, default=0,
                        help="encode classes in chunks of this size with activation checkpointing")
    parser.add_argument("--no-truncate-text", action="store_true",
                        help="run the text encoder over the full context (reference semantics)")
    parser.add_argument("--no-shared-prefix", action="store_true",
                        help="encode the positions all class prompts share once per class (reference semantics)")


def run(args: argparse.Namespace) -> int:
    from ..methods import EncoderOptions
    from ..parity import run_parity

    encoder = EncoderOptions(
        text_chunk_size=args.text_chunk_size,
        truncate_text=not args.no_truncate_text,
        share_text_prefix=not args.no_shared_prefix,
    )
    results = run_parity(args.reference, args.case, encoder)
    failed = 0
    print(f"{'case':<20} {'tensor':<72}{'max abs err':>14}{'max rel err':>14}  result")
    for res in results:
        if res.error:
            failed += 1
            print(f"{res.case:<20} {'-':<72}{'':>14}{'':>14}  CANNOT CHECK: {res.error}")
            continue
        for c in res.checks:
            status = "ok" if c.ok else f"MISMATCH {c.note}".rstrip()
            print(f"{c.case:<20} {c.name:<72}{c.max_abs:>14.3e}{c.max_rel:>14.3e}  {status}")
        failed += 0 if res.ok else 1
    loose = sorted({c.name.split("/")[0] for r in results for c in r.checks if c.rtol > 1e-4})
    extra = f"; {', '.join(loose)} (loss parts that cancel) <= 1e-3" if loose else ""
    print(f"{len(results) - failed} of {len(results)} cases pass (relative error <= 1e-4{extra})")
    return 1 if failed else 0
