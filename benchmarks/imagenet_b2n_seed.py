"""Time one MaPLe ImageNet base-to-novel seed end to end, on synthetic images of ImageNet's size.

    python benchmarks/imagenet_b2n_seed.py --work /tmp/b2n --precision bf16 --num-workers 12

What runs is the real command, ``mmprompt benchmark base2novel --config maple_b2n --datasets imagenet
--seeds 1``: 16-shot sampling of the 500 base classes (8,000 images), 5 epochs of batch 4 (2,000 steps per
epoch, 10,000 in all), then evaluation on the base and the novel halves of the validation set (50 images
per class: 25,000 each), with JPEG decoding, resizing and the data loader included. Only the inputs are
stand-ins:

* an ImageNet folder in CoOp's layout (``imagenet/classnames.txt``, ``images/train|val/<wnid>/``) with
  JPEGs of 500 x 375 pixels (ImageNet's typical size; smooth random colour fields, 20-40 KB each) and
  synthetic class names of realistic token lengths (:func:`mmprompt.bench.synthetic_classnames`);
* a randomly initialised CLIP of ``--arch`` saved as an OpenAI state dict (same speed as the real one).

The dataset and weights are made once under ``--work`` and reused. The script prints (and writes to
``--work/timing.json``) the wall time of the command, and the training and evaluation seconds each run
recorded in its ``metrics.json``. ``--classes`` / ``--val-per-class`` / ``--arch`` scale it down for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (500, 375)
METRICS_NAME = "metrics.json"


def _write_images(job: tuple[str, list[str], int]) -> int:
    folder, names, seed = job
    rng = np.random.default_rng(seed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        path = Path(folder) / name
        if path.exists():
            continue
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)  # smooth colour field
        image = Image.fromarray(coarse).resize(SIZE, Image.BICUBIC)
        tmp = path.with_suffix(".part")
        image.save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
    return len(names)


def make_imagenet(root: Path, classes: int, train_per_class: int, val_per_class: int, workers: int) -> None:
    """A synthetic ImageNet in CoOp's layout under ``root/imagenet`` (kept when already complete)."""
    from mmprompt.bench import synthetic_classnames

    d = root / "imagenet"
    done = d / ".complete"
    stamp = f"{classes} {train_per_class} {val_per_class}"
    if done.exists() and done.read_text() == stamp:
        return
    names = synthetic_classnames(classes, seed=0)
    wnids = [f"n{i:08d}" for i in range(classes)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names, strict=True)))
    jobs = []
    for i, wnid in enumerate(wnids):
        jobs.append((str(d / "images" / "train" / wnid), [f"{wnid}_{k}.JPEG" for k in range(train_per_class)], i))
        jobs.append((str(d / "images" / "val" / wnid), [f"val_{wnid}_{k}.JPEG" for k in range(val_per_class)],
                     classes + i))
    start = time.perf_counter()
    if workers <= 1:
        total = sum(map(_write_images, jobs))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            total = sum(pool.map(_write_images, jobs, chunksize=8))
    print(f"wrote {total} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    done.write_text(stamp)


def make_weights(path: Path, arch: str) -> None:
    """A randomly initialised CLIP of ``arch``, saved as an OpenAI state dict with the open_clip_config.json
    beside it that states its heads, activation and pooling."""
    import json

    import torch

    from mmprompt.clip.config import get_config
    from mmprompt.clip.model import build_model
    from mmprompt.clip.openclip import open_clip_config

    config_file = path.parent / "open_clip_config.json"
    if path.exists() and config_file.exists():
        return
    torch.manual_seed(0)
    model = build_model(get_config(arch))
    tmp = path.with_suffix(".part")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    tmp = config_file.with_suffix(".part")
    tmp.write_text(json.dumps(open_clip_config(model.config), indent=1))
    os.replace(tmp, config_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="folder for the data, weights and run")
    parser.add_argument("--arch", default="ViT-B/16")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for the run")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    make_imagenet(work / "data", args.classes, args.train_per_class, args.val_per_class, args.num_workers)
    weights = work / f"random-{args.arch.replace('/', '-')}.pt"
    make_weights(weights, args.arch)
    run_dir = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        sys.executable, "-m", "mmprompt.cli", "benchmark", "base2novel", "--config", "maple_b2n",
        "--datasets", "imagenet", "--seeds", "1", "--data-root", str(work / "data"), "--clip", str(weights),
        "--clip-activation", "quick_gelu", "--precision", args.precision, "--device", args.device,
        "--num-workers", str(args.num_workers), "--no-progress", "--output", str(run_dir),
    ]
    if args.set:
        cmd += ["--set", *args.set]
    print("$ " + " ".join(cmd), file=sys.stderr)
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - start
    timing = {
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "classes": args.classes,
        "val_per_class": args.val_per_class,
        "precision": args.precision,
        "arch": args.arch,
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for metrics_file in sorted(run_dir.rglob(METRICS_NAME)):  # the run's own account of its parts
        metrics = json.loads(metrics_file.read_text())
        part = {"train_s": metrics.get("train", {}).get("seconds"), "run_s": metrics.get("seconds")}
        for split, result in metrics.get("eval", {}).items():
            part[f"eval_{split}_s"] = result.get("seconds")
            part[f"eval_{split}_accuracy"] = result.get("accuracy")
        timing[str(metrics_file.parent.relative_to(run_dir))] = part
    try:
        import torch

        if torch.cuda.is_available():
            timing["device_name"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    text = json.dumps(timing, indent=2)
    (work / "timing.json").write_text(text + "\n")
    print(text)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
