"""Per-step operator count and host synchronisations of a MaPLe training step (forward + backward).

On a fast accelerator a small step is bound by how many operators Python launches and how often the
host waits for the device, not by arithmetic. This script counts both on CPU, where the same Python
code runs: every aten operator dispatched during one training step (``TorchDispatchMode``, backward
included), and the operators that make a CUDA host wait for the device:

* ``_local_scalar_dense`` (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)`` on a tensor),
* operators whose output size depends on the data (``nonzero``, ``masked_select``, ``unique``,
  ``repeat_interleave`` without ``output_size``),
* ``Tensor.tolist()`` / ``Tensor.cpu()`` / ``Tensor.numpy()`` (counted by wrapping them here: on a CPU
  tensor they dispatch nothing).

It prints the figures for the default path and for the reference path (``truncate_text=False,
share_text_prefix=False``, no chunking), and the CPU step-time ratio (paths interleaved, median of
repeats). Example::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/step_overhead.py --arch tiny-parity --classes 500
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmprompt.bench.core import synthetic_classnames
from mmprompt.clip.config import get_config
from mmprompt.clip.model import build_model
from mmprompt.methods import create_learner, make_config
from mmprompt.methods.contract import EncoderOptions

VIEW_OPS = {"view", "_unsafe_view", "t", "transpose", "permute", "slice", "select", "expand", "detach", "alias",
            "unsqueeze", "squeeze", "as_strided", "unbind", "split", "split_with_sizes", "chunk", "narrow",
            "_reshape_alias", "reshape", "lift_fresh"}
"""Operators that only make a new view of existing memory: dispatched on the host, no device kernel."""

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
            "unique_consecutive", "unique_dim"}


class OpCounter(TorchDispatchMode):
    """Counts every aten operator dispatched, and those that make a CUDA host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.syncs: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        elif name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and args[0].dim() > 0 \
                and "repeats" not in kwargs and kwargs.get("output_size") is None and len(args) < 2:
            self.syncs["repeat_interleave(no output_size)"] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_reads(counter: OpCounter) -> Iterator[None]:
    """Count ``Tensor.tolist`` / ``cpu`` / ``numpy`` calls (copies to the host) into ``counter.syncs``."""
    saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "cpu", "numpy")}

    def wrap(name: str) -> Any:
        original = saved[name]

        def call(self: torch.Tensor, *a: Any, **k: Any) -> Any:
            counter.syncs[f"Tensor.{name}"] += 1
            return original(self, *a, **k)

        return call

    for name in saved:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def build(args: argparse.Namespace, path: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A MaPLe learner on a random CLIP for ``args.classes`` synthetic classes, images and labels."""
    torch.manual_seed(0)
    clip = build_model(get_config(args.arch)).eval().requires_grad_(False)
    if path == "reference":
        encoder = EncoderOptions(truncate_text=False, share_text_prefix=False, text_chunk_size=0,
                                 text_chunk_tokens=0)
    else:
        encoder = EncoderOptions(text_chunk_tokens=args.text_chunk_tokens)
    depth = min(9, clip.config.text.layers, clip.config.vision.layers)
    config = make_config("maple", {"depth": depth})
    torch.manual_seed(1)
    learner = create_learner("maple", clip, synthetic_classnames(args.classes), config, encoder=encoder)
    learner.train()
    gen = torch.Generator().manual_seed(2)
    size = clip.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size, generator=gen)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen)
    return learner, images, labels


def step(learner: Any, images: torch.Tensor, labels: torch.Tensor, precision: str) -> torch.Tensor:
    """One forward + backward; the loss (not read back, so that the count holds only the step's own reads)."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    learner.zero_grad(set_to_none=True)
    with ctx:
        loss = learner(images, labels).total
    loss.backward()
    return loss.detach()


def count(learner: Any, images: torch.Tensor, labels: torch.Tensor, precision: str) -> OpCounter:
    step(learner, images, labels, precision)  # warm caches (frozen casts, per-class-list state)
    counter = OpCounter()
    with host_reads(counter), counter:
        step(learner, images, labels, precision)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny-parity", help="CLIP architecture (e.g. tiny-parity, ViT-B/16)")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--text-chunk-tokens", type=int, default=EncoderOptions().text_chunk_tokens,
                        help="default path: prompt tokens above which the classes are chunked (0: never)")
    parser.add_argument("--paths", default="default,reference", help="paths measured, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per path (interleaved)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="most frequent operators listed per path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = tuple(args.paths.split(","))
    built = {p: build(args, p) for p in paths}
    losses = {p: float(step(*built[p], args.precision)) for p in paths}
    print(f"MaPLe, {args.arch}, {args.classes} classes, batch {args.batch}, {args.precision}, "
          f"text_chunk_tokens {args.text_chunk_tokens}, "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    print("first loss: " + ", ".join(f"{p} {v:.6f}" for p, v in losses.items()))
    for p in paths:
        c = count(*built[p], args.precision)
        syncs = ", ".join(f"{k} {v}" for k, v in sorted(c.syncs.items())) or "none"
        kernels = sum(v for k, v in c.ops.items() if k not in VIEW_OPS)
        print(f"{p:9s}: {sum(c.ops.values()):6d} aten ops per step ({kernels} not views), "
              f"{sum(c.syncs.values()):3d} host syncs ({syncs})")
        print("           most frequent: " + ", ".join(f"{k} {v}" for k, v in c.ops.most_common(args.top)))
    times: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(args.repeats):
        for p in paths:
            start = time.perf_counter()
            step(*built[p], args.precision)
            times[p].append(time.perf_counter() - start)
    med = {p: statistics.median(times[p]) for p in paths}
    line = ", ".join(f"{p} {med[p]:.3f} s" for p in paths)
    if len(paths) == 2:
        line += f", {paths[1]} / {paths[0]} {med[paths[1]] / med[paths[0]]:.2f}x"
    print(f"CPU step time (median of {args.repeats}, interleaved): {line}")


if __name__ == "__main__":
    main()
