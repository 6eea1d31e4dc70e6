"""Cross-dataset transfer and domain generalisation: train once on a source, evaluate on targets.

Per (method, seed): train on the source dataset (ImageNet, all classes, 16 shots) and evaluate on its
test set; then evaluate the same prompts on each target's test set with all the target's classes
(ImageNet-A and -R have their 200-class subsets, read from their folders). Cross-dataset and domain
generalisation share the source run folder, so running both trains each (method, seed) once.

A transductive method (PromptKD) follows its own official cross-dataset procedure instead: it does not train
once on the source but, per (method, target, seed), trains its student on the TARGET's unlabelled full
training split, distilling from the teacher trained on the source (``teacher.path``; a ``{dataset}`` in it is
replaced by the SOURCE key, so every target gets the ImageNet teacher, as the official ``xd_train.sh`` does),
and evaluates it on all the target's test images. These runs live in ``<output>/<method>/<target>/
transductive-from-<source>/seed<k>/``, record ``transfer_source`` in their metrics, and their rows are labelled
transductive. A target with test images only (the domain-generalisation targets) cannot be trained on and is
refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .common import SweepOptions, run_config, run_folder
from .plan import RunSpec

__all__ = ["CROSS_DATASET_TARGETS", "DG_TARGETS", "plan_transductive_transfer", "plan_transfer"]

CROSS_DATASET_TARGETS: tuple[str, ...] = (
    "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd",
    "eurosat", "ucf101",
)
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def plan_transfer(opts: SweepOptions, source: str, targets: Sequence[str],
                  source_runs: str | Path | None = None) -> list[RunSpec]:
    """One spec per (method, seed): train on ``source`` (its folder under ``source_runs``, default the sweep's
    output), evaluate on its test set and on every target. Transductive methods: one spec per (method, target,
    seed) instead (:func:`plan_transductive_transfer`)."""
    from ..methods import get_method

    transductive = [m for m in opts.methods if get_method(m).learner.transductive]
    base = Path(source_runs or opts.output).absolute()
    specs = [
        RunSpec("transfer", method, source, int(seed),
                str(run_folder(base, method, source, f"source-{opts.shots}shots", seed)),
                run_config(opts, method, "transfer", source, seed, subsample="all").to_dict(), tuple(targets))
        for method in opts.methods if method not in transductive for seed in opts.seeds
    ]
    return specs + plan_transductive_transfer(opts, transductive, source, targets)


def transductive_setting(source: str) -> str:
    """The run folder's setting of a transductive transfer run: ``transductive-from-<source>``."""
    return f"transductive-from-{source}"


def plan_transductive_transfer(opts: SweepOptions, methods: Sequence[str], source: str,
                               targets: Sequence[str]) -> list[RunSpec]:
    """One spec per (method, target, seed) for transductive methods: train on the target's unlabelled training
    split with the source's teacher, evaluate on all its classes (the official PromptKD cross-dataset)."""
    if not methods:
        return []
    from ..config import ConfigError

    test_only = [t for t in targets if _test_only(t)]
    if test_only:
        raise ConfigError(f"{', '.join(methods)} trains transductively on each target's unlabelled training images, "
                          f"but {', '.join(test_only)} has test images only: a transductive method takes the "
                          "cross-dataset protocol, not domain generalisation")
    specs = []
    for method in methods:
        for target in targets:
            for seed in opts.seeds:
                cfg = run_config(opts, method, "transfer", target, seed, subsample="all")
                # the official cross-dataset distils every target from the ImageNet teacher: {dataset} is the source
                teacher = str(cfg.teacher.path).replace("{dataset}", source)
                cfg = cfg.with_overrides({"teacher.path": teacher, "data.shots": 0})
                folder = run_folder(Path(opts.output).absolute(), method, target, transductive_setting(source), seed)
                specs.append(RunSpec("transfer", method, target, int(seed), str(folder), cfg.to_dict(),
                                     extra={"transfer_source": source}))
    return specs


def _test_only(dataset: str) -> bool:
    """Whether ``dataset`` has test images only (ImageNet-A, -R, -Sketch, V2); unknown datasets: no."""
    try:
        from ..data import get_dataset_info

        return bool(get_dataset_info(dataset).test_only)
    except (KeyError, ImportError):
        return False
