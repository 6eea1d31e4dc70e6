"""Several MaPLe base-to-novel runs packed on one GPU by the Ray launcher: throughput and peak memory.

    python benchmarks/gpu_packing.py --work /tmp/pack --concurrency 1 2 4 6

For each concurrency n, one sweep of n runs (seeds 1..n of ``maple_b2n`` on a synthetic ImageNet, all at
once) goes through the real code path, ``run_base2novel(..., launch=LaunchOptions(launcher="ray",
gpus_per_run=1/n))`` on a local Ray cluster: n tasks share the GPU. Printed per n (and written to
``--work/packing.json``): the sweep's wall time, the mean per-run training images/s and their sum (the GPU's
aggregate throughput, since the runs train at the same time), the largest per-run
``torch.cuda.max_memory_allocated`` (each run's ``metrics.json``) and the peak memory in use on the device
(``nvidia-smi``, CUDA contexts included, sampled every 0.5 s).

The data and weights are those of ``imagenet_b2n_seed.py`` (500 x 375 JPEGs, a random ``--arch`` CLIP),
made once under ``--work``. Defaults keep the measurement short but the memory realistic: 1000 classes (500
base classes in the text encoder, as ImageNet), 4 shots, 1 epoch (500 steps of batch 4), 2 test images
per class. ``--device cpu --arch tiny`` runs it without a GPU (smoke test; GPU columns empty).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _seed_script() -> Any:
    """``imagenet_b2n_seed.py`` (its data and weights makers), importable by the pool it starts."""
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("imagenet_b2n_seed")


class DeviceMemory:
    """Peak ``memory.used`` of GPU ``index`` from nvidia-smi, sampled in a thread (None without nvidia-smi)."""

    def __init__(self, index: int = 0) -> None:
        self.index, self.peak, self._stop = index, None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=10, check=True).stdout
                used = float(out.strip().splitlines()[0])
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> DeviceMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(n: int, args: argparse.Namespace, data: Path, weights: Path) -> dict[str, Any]:
    from mmprompt.protocols import run_base2novel
    from mmprompt.protocols.launch import LaunchOptions

    gpus = 0.0 if args.device == "cpu" else 1.0 / n
    launch = LaunchOptions(launcher="ray", gpus_per_run=gpus, cpus_per_run=args.cpus_per_run, max_retries=0,
                           progress=False)
    out = args.work / f"pack-{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [f"optim.epochs={args.epochs}", f"precision={args.precision}", f"data.num_workers={args.num_workers}",
                 *args.set]
    start = time.perf_counter()
    with DeviceMemory() as device_memory:
        results = run_base2novel(["maple"], ["imagenet"], list(range(1, n + 1)), data, str(weights), out,
                                 presets={"maple": "maple_b2n"}, overrides=overrides, shots=args.shots,
                                 clip_activation="quick_gelu", device=args.device, launch=launch, progress=False)
    wall = time.perf_counter() - start
    costs = [json.loads(p.read_text())["cost"] for p in sorted(out.rglob("metrics.json"))]
    rates = [c["train_images_per_second"] for c in costs if c.get("train_images_per_second")]
    gpu_peaks = [c["peak_gpu_mib"] for c in costs if c.get("peak_gpu_mib") is not None]
    return {
        "concurrent_runs": n, "gpus_per_run": gpus, "finished_runs": len(costs), "failed": results.get("failed", []),
        "sweep_wall_s": round(wall, 1),
        "per_run_train_img_s": round(sum(rates) / len(rates), 1) if rates else None,
        "aggregate_train_img_s": round(sum(rates), 1) if rates else None,
        "max_run_peak_gpu_mib": round(max(gpu_peaks)) if gpu_peaks else None,
        "device_peak_used_mib": device_memory.peak,
        "output": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="folder for the data, weights and runs")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4, 6])
    parser.add_argument("--arch", default="ViT-B/16")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cpus-per-run", type=float, default=2.0, help="Ray CPUs per run (main process + loaders)")
    parser.add_argument("--num-workers", type=int, default=1, help="data-loader workers per run")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()

    import ray

    seed = _seed_script()
    seed.make_imagenet(args.work / "data", args.classes, args.shots, args.val_per_class, 8)
    weights = args.work / f"random-{args.arch.replace('/', '-')}.pt"
    seed.make_weights(weights, args.arch)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        rows = [measure(n, args, args.work / "data", weights) for n in args.concurrency]
    finally:
        ray.shutdown()
    report: dict[str, Any] = {"arch": args.arch, "classes": args.classes, "shots": args.shots, "epochs": args.epochs,
                              "precision": args.precision, "machine": platform.node(), "date": time.strftime("%Y-%m-%d"),
                              "rows": rows}
    try:
        import torch

        if torch.cuda.is_available():
            report["device_name"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    (args.work / "packing.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    head = ("runs", "sweep wall s", "train img/s per run", "aggregate img/s", "max run peak GPU MiB", "device peak MiB")
    print("\n| " + " | ".join(head) + " |\n|" + "---:|" * len(head), file=sys.stderr)
    for r in rows:
        cells = [r["concurrent_runs"], r["sweep_wall_s"], r["per_run_train_img_s"], r["aggregate_train_img_s"],
                 r["max_run_peak_gpu_mib"], r["device_peak_used_mib"]]
        print("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |", file=sys.stderr)
    return 1 if any(r["failed"] or not r["finished_runs"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
