"""Cross-dataset transfer and domain generalisation: train once on a source, evaluate on targets.

Per (method, seed): train on the source dataset (ImageNet, all classes, 16 shots) and evaluate on its
test set; then evaluate the same prompts on each target's test set with all the target's classes
(ImageNet-A and -R have their 200-class subsets, read from their folders). Cross-dataset and domain
generalisation share the source run folder, so running both trains each (method, seed) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .common import SweepOptions, run_config, run_folder
from .plan import RunSpec

__all__ = ["CROSS_DATASET_TARGETS", "DG_TARGETS", "plan_transfer"]

CROSS_DATASET_TARGETS: tuple[str, ...] = (
    "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd",
    "eurosat", "ucf101",
)
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def plan_transfer(opts: SweepOptions, source: str, targets: Sequence[str],
                  source_runs: str | Path | None = None) -> list[RunSpec]:
    """One spec per (method, seed): train on ``source`` (its folder under ``source_runs``, default the sweep's
    output), evaluate on its test set and on every target."""
    from ..config import ConfigError
    from ..methods import get_method

    transductive = [m for m in opts.methods if get_method(m).learner.transductive]
    if transductive:  # they train on each target's unlabelled images, not once on the source
        raise ConfigError(f"{', '.join(transductive)} trains transductively on each target's unlabelled images, not "
                          f"once on {source}: run `mmprompt train --config promptkd_xd --dataset TARGET --teacher "
                          "SOURCE_TEACHER` per target instead of a transfer sweep")
    base = Path(source_runs or opts.output).absolute()
    return [
        RunSpec("transfer", method, source, int(seed),
                str(run_folder(base, method, source, f"source-{opts.shots}shots", seed)),
                run_config(opts, method, "transfer", source, seed, subsample="all").to_dict(), tuple(targets))
        for method in opts.methods for seed in opts.seeds
    ]
