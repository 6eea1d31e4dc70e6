"""``mmprompt bench``: training-step time, evaluation throughput and memory, default vs reference paths."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated class counts, got {text!r}") from exc
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"class counts must be positive, got {text!r}")
    return counts


def _options(items: list[str]) -> dict[str, Any]:
    """``method.FIELD=VALUE`` (or the old ``FIELD=VALUE``) items as method config values (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects method.FIELD=VALUE, got {item!r}")
        key = key.strip()
        if key.startswith("method."):
            key = key[len("method."):]
        elif "." in key:
            raise ValueError(f"--set {item!r}: speed measures a method's step; only method.FIELD=VALUE applies")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .grammar import add_deprecated_alias

    parser.add_argument("--method", default="maple", help="prompt learner (default: maple)")
    parser.add_argument("--clip", metavar="WEIGHTS", default=None,
                        help="CLIP weights: a registry name (default ViT-B/16), a path, or \"demo\" (the built-in "
                        "demo CLIP); with --random-weights, an architecture name")
    add_deprecated_alias(parser, "--weights", "--clip", dest="clip")
    add_deprecated_alias(parser, "--arch", "--clip (an architecture name with --random-weights)", dest="arch")
    parser.add_argument("--teacher-arch", default="",
                        help="methods with a teacher (promptkd): the teacher's architecture, random weights (default: "
                        "ViT-L/14 for a ViT-B student, else the student's)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="randomly initialised CLIP of the --clip architecture (same speed, nothing to download)",
    )
    parser.add_argument(
        "--classes",
        type=_counts,
        default=[10, 100, 1000],
        help="comma-separated class counts (default: 10,100,1000)",
    )
    parser.add_argument("--batch", type=int, default=4, help="training batch size (default: 4)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32, or bf16/fp16 autocast around the forward pass",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--eval-images", type=int, default=200, help="images evaluated (default: 200)")
    parser.add_argument("--eval-batch", type=int, default=100, help="evaluation batch size (default: 100)")
    parser.add_argument(
        "--text-chunk-size",
        type=int,
        default=0,
        help="default path: classes per text chunk (0: the learner's automatic chunking)",
    )
    parser.add_argument("--set", dest="option", nargs="+", action="extend", default=[], metavar="method.FIELD=VALUE",
                        help="method config fields for both paths, e.g. method.depth=3 (JSON values)")
    add_deprecated_alias(parser, "--option", "--set method.FIELD=VALUE", dest="option", nargs="+")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads in the measuring processes (default 0: torch's default)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=0.0,
        help="CPU: stop a measurement whose resident set exceeds this "
        "(default: 80%% of the memory available at start)",
    )
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (peak memories then mix; for debugging)",
    )
    parser.add_argument(
        "--no-fp32-baseline",
        action="store_true",
        help="with bf16/fp16: do not also time the default training step in fp32 for the precision ratio",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--output", default="", help="also write the JSON document to this file")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _speedup(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def print_table(doc: dict[str, Any]) -> None:
    """A human-readable summary of a benchmark document."""
    s, m = doc["settings"], doc["machine"]
    print(
        f"{s['method']} {s['arch']} batch {s['batch']} {s['precision']} on {m['device']} "
        f"({m['device_name']}, {m['torch_threads']} threads, torch {m['torch_version']}); "
        f"{s['steps']} timed steps after {s['warmup']} warm-up, {s['eval_images']} eval images"
    )
    columns = [
        ("classes", 8),
        ("path", -10),
        ("tokens", 7),
        ("step s", 8),
        ("eval img/s", 11),
        ("encoder img/s", 14),
        ("train MiB", 10),
        ("eval MiB", 9),
    ]
    print(" ".join(f"{name:<{-w}}" if w < 0 else f"{name:>{w}}" for name, w in columns) + "  note")
    for entry in doc["results"]:
        for path in ("default", "reference"):
            r = entry[path]
            cells = [
                str(entry["classes"]),
                path,
                _fmt(r["prompt_tokens"].get("encoded_per_class"), ".1f"),
                _fmt(r["train_step_s"], ".3f"),
                _fmt(r["eval_images_per_s"], ".2f"),
                _fmt(r["image_encoder_images_per_s"], ".2f"),
                _mib(r["train_peak_memory_bytes"]),
                _mib(r["eval_peak_memory_bytes"]),
            ]
            row = " ".join(
                f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, columns, strict=True)
            )
            print(f"{row}  {r['error']}")
        c = entry["comparison"]
        upper = c["train_memory_fraction_is_upper_bound"]
        print(
            f"{'':>8} train speed-up {_speedup(c['train_speedup'])}, "
            f"eval speed-up {_speedup(c['eval_speedup'])}, "
            f"eval / image encoder {_fmt(c['eval_vs_image_encoder'], '.3f')}, "
            f"train memory fraction {_fmt(c['train_memory_fraction'], '.3f')}"
            f"{' (at most: the reference ran out of memory)' if upper else ''}, "
            f"first-loss difference {_fmt(c['first_loss_abs_diff'], '.2e')}"
        )
        if "fp32_default" in entry:
            base = entry["fp32_default"]
            print(
                f"{'':>8} default train step in fp32 {_fmt(base['train_step_s'], '.3f')} s: "
                f"{s['precision']} speed-up {_speedup(c['precision_speedup'])} {base['error']}".rstrip()
            )


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchSettings, run_benchmark
    from ..errors import UsageError, classify_error

    clip = args.clip or ""
    arch = getattr(args, "arch", None) or clip or "ViT-B/16"  # recorded; built only with --random-weights
    try:
        same_name = {f.name for f in dataclasses.fields(BenchSettings)} & set(vars(args)) - {"arch"}
        settings = BenchSettings(
            **{name: getattr(args, name) for name in same_name},
            arch=arch,
            weights="" if args.random_weights else clip,
            method_options=_options(args.option),
            isolate=not args.no_isolate,
            fp32_baseline=not args.no_fp32_baseline,
        )
        doc = run_benchmark(settings)
    except (ValueError, KeyError, RuntimeError) as exc:
        if classify_error(exc) is not None and not isinstance(exc, (KeyError, RuntimeError)):
            raise
        raise UsageError(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)) from None
    doc["command"] = "mmprompt " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "mmprompt bench"
    text = json.dumps(doc, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print_table(doc)
    failed = [e["classes"] for e in doc["results"] if e["default"]["error"]]
    return 1 if failed else 0
