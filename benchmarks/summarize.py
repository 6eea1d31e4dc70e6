"""Markdown tables from ``mmprompt bench --output`` JSON files (used for benchmarks/README.md).

    python benchmarks/summarize.py benchmarks/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def table(doc: dict[str, Any], name: str) -> str:
    """One markdown table per result file: both paths per class count, then their ratios."""
    s, m = doc["settings"], doc["machine"]
    lines = [
        f"#### {name}",
        "",
        f"`{doc.get('command', '')}`  ",
        f"{m['cpu_model']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, "
        f"torch {m['torch_version']}, {m['date']}; {s['precision']}, batch {s['batch']}, "
        f"{s['steps']} timed steps after {s['warmup']} warm-up, "
        f"{s['eval_images']} eval images in batches of {s['eval_batch']}",
        "",
        "| classes | path | text tokens / class | train step s (median) | eval img/s | image encoder img/s "
        "| train peak MiB | load avg | note |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for e in doc["results"]:
        for path in ("default", "reference"):
            r = e[path]
            load = "-".join(f"{x:.1f}" for x in r["load_average"][:1] + r["load_average"][-1:])
            lines.append(
                f"| {e['classes']} | {path} | {_f(r['prompt_tokens'].get('encoded_per_class'), '.1f')} "
                f"| {_f(r['train_step_s'], '.2f')} | {_f(r['eval_images_per_s'], '.2f')} "
                f"| {_f(r['image_encoder_images_per_s'], '.2f')} | {_mib(r['train_peak_memory_bytes'])} "
                f"| {load} | {r['error']} |"
            )
    lines += [
        "",
        "| classes | train speed-up | eval speed-up | eval / image encoder | train memory fraction "
        "| first-loss difference | default train step in fp32 | speed-up over fp32 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in doc["results"]:
        c = e["comparison"]
        bound = "<= " if c["train_memory_fraction_is_upper_bound"] else ""
        lines.append(
            f"| {e['classes']} | {_x(c['train_speedup'])} | {_x(c['eval_speedup'])} "
            f"| {_f(c['eval_vs_image_encoder'], '.3f')} | {bound}{_f(c['train_memory_fraction'], '.3f')} "
            f"| {_f(c['first_loss_abs_diff'], '.1e')} "
            f"| {_f(e.get('fp32_default', {}).get('train_step_s'), '.2f')} "
            f"| {_x(c.get('precision_speedup'))} |"
        )
    return "\n".join(lines) + "\n"


def main(paths: list[str]) -> int:
    for p in paths:
        print(table(json.loads(Path(p).read_text()), Path(p).stem))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
