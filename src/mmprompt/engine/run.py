"""One run: build the learner, train it (unless it has nothing to train), save the prompts, evaluate.

A run folder holds ``config.yaml`` (written first), ``log.jsonl``, ``tb/``, ``checkpoint/state.pt``,
``prompts.safetensors`` + ``prompts.json`` and ``metrics.json``, written last: a folder with a
``metrics.json`` whose ``status`` is ``done`` is finished and is skipped when a sweep restarts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import load_prompts, save_prompts
from ..clip.model import CLIP
from ..config import RunConfig
from ..data.preflight import check_run_images
from ..fileio import atomic_write_bytes, atomic_write_json
from ..methods import DatasetContext, PromptLearner, Teacher, create_learner, get_method
from .checkpoint import saved_train_summary, seed_everything
from .cost import CostMeter, count_parameters
from .distributed import DistContext, barrier
from .evaluate import EvalResult, evaluate
from .teacher import RECORD_KEY as TEACHER_KEY
from .teacher import teacher_for, teacher_for_checkpoint, teacher_record
from .train import TrainResult, train

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "build_learner",
    "evaluate_split",
    "is_done",
    "learner_for_eval",
    "load_splits",
    "read_metrics",
    "run_experiment",
    "write_config",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


def is_done(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished run (``metrics.json`` with status done)."""
    metrics = read_metrics(run_dir)
    return metrics is not None and metrics.get("status") == "done"


def read_metrics(run_dir: str | Path, name: str = METRICS_FILE) -> dict[str, Any] | None:
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("ignoring unreadable %s", path)
        return None


def write_config(cfg: RunConfig, run_dir: str | Path) -> Path:
    """Write the resolved config as ``config.yaml`` (atomically)."""
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_bytes(path, cfg.to_yaml().encode("utf-8"))
    return path


def load_splits(
    cfg: RunConfig,
    subsample: str | None = None,
    shots: int | None = None,
    dataset: str | None = None,
    ctx: DistContext | None = None,
) -> Any:
    """The dataset of ``cfg.data`` (or ``dataset``) after few-shot sampling and class subsampling.

    With several processes, rank 0 reads first (it may write the few-shot cache), then the others.
    """
    from ..data import build_dataset

    name = dataset or cfg.data.dataset
    if not name:
        raise ValueError("no dataset given (data.dataset / --dataset)")
    if not cfg.data.root:
        raise ValueError("no data root given (data.root / --data-root)")

    def build() -> Any:
        return build_dataset(
            name, cfg.data.root,
            shots=cfg.data.shots if shots is None else shots,
            seed=cfg.data.seed,
            subsample=cfg.data.subsample if subsample is None else subsample,
            **custom_files(cfg, name),
        )

    if ctx is None or not ctx.enabled:
        return build()
    splits = build() if ctx.is_main else None
    barrier(ctx)
    return splits if splits is not None else build()


def custom_files(cfg: RunConfig, dataset: str) -> dict[str, Any]:
    """``classnames_file`` / ``split_file`` of ``cfg.data`` for a custom dataset (they apply to nothing else)."""
    files = {"classnames_file": cfg.data.classnames_file, "split_file": cfg.data.split_file}
    if dataset.lower() != "custom":
        if any(files.values()):
            from ..config import ConfigError

            raise ConfigError(f"data.classnames_file and data.split_file apply to custom datasets only, not {dataset!r}")
        return {}
    return files


def dataset_context(splits: Any, cfg: RunConfig | None = None) -> DatasetContext:
    """What a method may know about the dataset of ``splits``: its key, its own template and the class
    descriptions of ``cfg.data.descriptions`` (a file, or a folder with one file per dataset)."""
    from ..descriptions import descriptions_for_dataset

    name = getattr(splits, "name", None)
    descriptions, source = descriptions_for_dataset(cfg.data.descriptions if cfg else None, name)
    return DatasetContext(name=name, template=getattr(splits, "template", None), descriptions=descriptions,
                          descriptions_source=source or None)


def check_descriptions_cover(cfg: RunConfig, splits_list: list[Any]) -> None:
    """Before anything is written or trained: when ``cfg``'s method needs class descriptions, every class of
    every split (training and evaluation) must have sentences (else a one-line ConfigError)."""
    from ..checks import ConfigError
    from ..descriptions import match_descriptions
    from ..methods import get_method, make_config

    learner = get_method(cfg.method.name).learner
    if not learner.uses_descriptions or not learner.needs_descriptions(make_config(cfg.method.name, cfg.method.options)):
        return
    for splits in splits_list:
        context = dataset_context(splits, cfg)
        if context.descriptions is None:
            where = f" ({context.descriptions_source} does not exist)" if context.descriptions_source else ""
            raise ConfigError(f"{cfg.method.name} with these options needs class descriptions for {splits.name}"
                              f"{where}: pass --descriptions FILE (JSON: class name -> list of sentences)")
        match_descriptions(list(splits.classnames), context.descriptions, context.descriptions_source or "")


def build_learner(cfg: RunConfig, clip: CLIP, splits: Any, teacher: Teacher | None = None) -> PromptLearner:
    """The learner of ``cfg.method`` on ``clip`` for the classes and dataset context of ``splits`` (with the
    frozen ``teacher`` of a distilling method; loaded from ``cfg.teacher`` when not given)."""
    from ..methods import get_method

    if cfg.data.descriptions and not get_method(cfg.method.name).learner.uses_descriptions:
        logger.warning("%s does not read class descriptions; data.descriptions (%s) is ignored", cfg.method.name,
                       cfg.data.descriptions)
    if teacher is None:
        teacher = teacher_for(cfg, clip, list(splits.classnames), dataset=getattr(splits, "name", None))
    learner = create_learner(cfg.method.name, clip, list(splits.classnames), cfg.method.options,
                             dataset=dataset_context(splits, cfg), encoder=cfg.encoder, teacher=teacher)
    return learner.to(next(clip.parameters()).device)


def learner_for_eval(run_dir: str | Path, cfg: RunConfig, clip: CLIP, splits: Any) -> PromptLearner:
    """The run's trained prompts pointed at ``splits``' classes and dataset (with the teacher the run
    recorded, or ``cfg.teacher``'s if it has the same SHA-256)."""
    teacher = teacher_for_checkpoint(run_dir, clip, list(splits.classnames), cfg.teacher.path, cfg.teacher.clip)
    learner = load_prompts(run_dir, clip, classnames=list(splits.classnames), dataset=dataset_context(splits, cfg),
                           encoder=cfg.encoder, teacher=teacher)
    return learner.to(next(clip.parameters()).device)


class UnlabelledImage:
    """A training image of a transductive run: its path only (``label`` is a constant -1 and ``classname``
    empty: never a class)."""

    __slots__ = ("path",)
    label = -1
    classname = ""

    def __init__(self, path: Any) -> None:
        self.path = path

    def resolve(self, image_dir: str | Path) -> Path:
        """Absolute path of the image, given the image folder the path is relative to."""
        return Path(image_dir) / self.path


def transductive_samples(samples: Any) -> list[UnlabelledImage]:
    """The images of ``samples`` without their labels (only ``path`` is read)."""
    return [UnlabelledImage(s.path) for s in samples]


def transductive_splits(cfg: RunConfig, splits: Any, ctx: DistContext | None = None) -> Any:
    """What a transductive learner trains on: the full training split (no few-shot sampling) of every class
    of the dataset; ``splits`` itself when it is that already."""
    if cfg.data.subsample == "all" and cfg.data.shots < 1:
        return splits
    logger.info("transductive method: training on the unlabelled full training split of all %s classes",
                cfg.data.dataset)
    return load_splits(cfg, subsample="all", shots=0, ctx=ctx)


def evaluate_split(
    learner: PromptLearner, splits: Any, cfg: RunConfig, ctx: DistContext | None = None, progress: bool = True,
    desc: str = "test", path: str | None = None,
) -> EvalResult:
    """Evaluate on the test split of ``splits`` with the learner set to its class names and dataset.

    ``path``: the inference path of a method that has several (None: the protocol's choice,
    :meth:`PromptLearner.protocol_path`: the first path on the training classes of the training dataset,
    the last one elsewhere); it is recorded in the result."""
    from ..descriptions import keep_descriptions

    context = keep_descriptions(dataset_context(splits, cfg), learner.dataset)  # held descriptions stay
    if list(learner.classnames) != list(splits.classnames) or learner.dataset != context:
        learner.set_classnames(list(splits.classnames), dataset=context)
    chosen = path if path is not None else learner.protocol_path()
    learner.set_inference_path(chosen)
    result = evaluate(
        learner, splits.test, image_dir=splits.image_dir, batch_size=cfg.eval_batch_size,
        precision=cfg.precision, num_workers=cfg.data.num_workers, ctx=ctx,
        skip_corrupt=cfg.data.skip_corrupt, progress=progress, desc=f"{desc} ({chosen} path)" if chosen else desc,
    )
    result.path = chosen
    return result


def run_experiment(cfg: RunConfig, clip: CLIP, clip_info: Mapping[str, Any], run_dir: str | Path,
                   **kwargs: Any) -> dict[str, Any] | None:
    """:func:`_run_experiment` (same arguments) holding ``run_dir``'s lock, on a config fitted to ``clip``.

    The lock (:class:`~mmprompt.runlock.RunLock`) refuses a second process on the same folder; temporary
    files of a write killed half-way are removed once it is held.
    """
    from ..fileio import remove_stale_temp_files
    from ..runlock import RunLock
    from .fit import fit_depths_to_clip

    ctx = kwargs.get("ctx")
    main = ctx is None or ctx.is_main
    with RunLock(run_dir, enabled=main, command=f"{cfg.method.name} on {cfg.data.dataset}"):
        if main:
            remove_stale_temp_files(run_dir)
        return _run_experiment(fit_depths_to_clip(cfg, clip), clip, clip_info, run_dir, **kwargs)


def _warn_label_typos(splits: Any) -> None:
    """What ``mmprompt data check`` warns about a likely label typo (a class with a single image), said by
    ``train`` too: a misspelt label would otherwise silently become a class of its own."""
    from ..data.quality import split_findings

    found, _ = split_findings({"train": splits.train, "val": splits.val, "test": splits.test}, splits.classnames,
                              required=())
    for warning in found:
        if "label typo" in warning:
            logger.warning("%s: %s; check the labels (mmprompt data check), or give the class names with "
                           "--classnames to make an unknown label an error", splits.name, warning)


def _run_experiment(
    cfg: RunConfig,
    clip: CLIP,
    clip_info: Mapping[str, Any],
    run_dir: str | Path,
    *,
    train_splits: Any,
    evals: Mapping[str, Any] | None = None,
    ctx: DistContext | None = None,
    resume: bool = True,
    stop_after_epochs: int | None = None,
    on_epoch_end: Callable[[int, TrainResult], None] | None = None,
    progress: bool = True,
    extra: Mapping[str, Any] | None = None,
    allow_config_change: bool = False,
) -> dict[str, Any] | None:
    """Train on ``train_splits.train`` and evaluate on the test split of each of ``evals``.

    ``evals`` maps a result name (``"base"``, ``"novel"``, ``"test"``) to dataset splits (default: the
    training dataset's own test split as ``"test"``). Returns the metrics written to ``metrics.json``,
    or None when the session stopped early (``stop_after_epochs``). A finished run is not run again
    (its metrics are returned) unless ``resume`` is False.
    """
    run_dir = Path(run_dir)
    ctx = ctx or DistContext(device=next(clip.parameters()).device)
    if resume and is_done(run_dir):
        logger.info("%s is finished; skipping", run_dir)
        return read_metrics(run_dir)
    evals = dict(evals or {"test": train_splits})
    check_descriptions_cover(cfg, [train_splits, *evals.values()])
    empty = [f"{splits.name} ({name})" for name, splits in evals.items() if not splits.test]
    if empty:  # said before training, not after it
        from ..data.errors import DataError

        raise DataError(f"the test split of {', '.join(empty)} is empty: there would be nothing to evaluate after "
                        "training; give test images (a split column, a test/ folder or the split file's test list)")
    if ctx.is_main:
        if not get_method(cfg.method.name).learner.transductive:  # a transductive run reads no label
            _warn_label_typos(train_splits)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir)
    start = time.perf_counter()
    meter = CostMeter(ctx.device)  # cost accounting
    seed_everything(cfg.data.seed)
    transductive = get_method(cfg.method.name).learner.transductive
    if transductive:
        train_splits = transductive_splits(cfg, train_splits, ctx)
    learner = build_learner(cfg, clip, train_splits)
    if transductive:  # from here on the training images carry no labels (only their paths are read)
        train_splits = dataclasses.replace(train_splits, train=transductive_samples(train_splits.train))
    train_splits, evals, data_check = check_run_images(  # issue 15: pre-flight image check
        train_splits, evals, check_train=bool(learner.trainable_parameters()), skip_corrupt=cfg.data.skip_corrupt,
        write_cache=ctx.is_main)
    n_trainable, n_train = count_parameters(learner.trainable_parameters()), 0  # cost accounting
    trained: TrainResult | None = None
    if learner.trainable_parameters():
        n_train = len(train_splits.train)  # cost accounting
        trained = train(
            learner, train_splits.train, cfg, run_dir, image_dir=train_splits.image_dir, ctx=ctx, resume=resume,
            stop_after_epochs=stop_after_epochs, on_epoch_end=on_epoch_end, progress=progress,
            allow_config_change=allow_config_change,
        )
        if not trained.completed:
            logger.info("stopped after epoch %d of %d; resume to continue", trained.epochs_done, trained.epochs_total)
            return None
    else:
        logger.info("%s has nothing to train; evaluating directly", cfg.method.name)
    info = {
        "dataset": train_splits.name, "subsample": cfg.data.subsample, "shots": cfg.data.shots,
        "seed": cfg.data.seed, "epochs": trained.epochs_total if trained else 0, **dict(extra or {}),
    }
    if transductive:  # results of unlabelled training on the evaluation classes are reported apart
        info.update({"transductive": True, "shots": 0, "train_images": len(train_splits.train)})
    if learner.teacher is not None:
        info[TEACHER_KEY] = teacher_record(learner.teacher)
    if ctx.is_main:
        save_prompts(learner, run_dir, clip_info=dict(clip_info), extra=info)
    results: dict[str, Any] = {}
    for name, splits in evals.items():
        results[name] = evaluate_split(learner, splits, cfg, ctx, progress, desc=f"{splits.name} {name}").to_dict()
    metrics = {
        "status": "done",
        "method": cfg.method.name,
        **info,
        "eval": results,
        "train": _train_summary(trained, run_dir),
        "data_check": data_check,
        "seconds": time.perf_counter() - start,
        "cost": meter.finish(n_trainable, n_train, cfg.optim.batch_size, len(trained.history) if trained else 0,
                             trained.seconds if trained else 0.0),  # cost accounting
    }
    if ctx.is_main:
        atomic_write_json(run_dir / METRICS_FILE, metrics)
    barrier(ctx)
    return metrics


def _train_summary(trained: TrainResult | None, run_dir: Path) -> dict[str, Any]:
    if trained is None:
        return {"epochs": 0}
    saved = saved_train_summary(run_dir)  # issue 15: kept across resumes
    last = trained.history[-1] if trained.history else saved.get("record", {})
    return {
        "config_changes": saved.get("config_changes", []),
        "epochs": trained.epochs_done,
        "resumed_from": trained.resumed_from,
        "final_loss": last.get("loss"),
        "final_acc": last.get("acc"),
        "seconds": trained.seconds,
    }
