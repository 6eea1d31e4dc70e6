"""``mmprompt train``: train prompts on one dataset, then evaluate them.

    mmprompt train --config maple_b2n --dataset eurosat --data-root /data --clip ViT-B/16 --output runs/x
    mmprompt train --config maple_b2n ... --set optim.lr=0.001 method.n_ctx=4 --resume

The output folder receives config.yaml, log.jsonl, tb/, checkpoint/state.pt (resume), the prompts
(prompts.safetensors + prompts.json, usable by ``mmprompt eval`` / ``mmprompt predict``) and metrics.json.
Under ``torchrun`` the run is data-parallel (global batch = optim.batch_size).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- shared by commands
def add_config_arguments(parser: argparse.ArgumentParser, with_method: bool = True, shots_list: bool = False) -> None:
    """``--config``, ``--set`` and the usual shortcuts (also used by ``benchmark``, where ``--shots`` takes
    several values for a few-shot curve)."""
    from .grammar import int_list

    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="PRESET", help="preset name (see --list-presets) or a YAML file")
    if with_method:
        g.add_argument("--method", help="method (default: the preset's); picks its default preset without --config")
    g.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted config overrides, values as YAML scalars (e.g. optim.lr=0.001 method.n_ctx=4)")
    g.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    g.add_argument("--clip", metavar="WEIGHTS", help="CLIP weights: a registry name (ViT-B/16), a path, or \"demo\" (the built-in demo CLIP)")
    g.add_argument("--clip-activation", choices=("quick_gelu", "gelu"),
                   help="MLP activation for weight files that do not say it (OpenAI: quick_gelu)")
    add_clip_description_arguments(g)
    g.add_argument("--data-root", help="folder holding the datasets in their official layout")
    if shots_list:
        int_list(g, "--shots", metavar="K", help="images per class (default 16); few-shot: several for a curve, "
                 "e.g. 1 2 4 8 16")
    else:
        g.add_argument("--shots", type=int, help="images per class (default: the preset's, 16)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1...")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="training / evaluation precision")
    g.add_argument("--num-workers", type=int, help="data-loader workers (default: what the machine has)")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="leave unreadable images out (listed, and recorded in metrics.json) instead of stopping")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_descriptions_argument(g)


def add_descriptions_argument(parser: Any) -> None:
    """``--descriptions FILE|DIR`` (``data.descriptions``), for the methods that read class descriptions."""
    parser.add_argument("--descriptions", metavar="FILE", help="class descriptions for methods that read them "
                        "(MMA++ cupl): JSON {class name: [sentence, ...]}, or a folder of <dataset>.json files")


def add_clip_description_arguments(parser: Any) -> None:
    """``--clip-config FILE`` and ``--clip-arch NAME``: what bare weights (no config beside them) are."""
    parser.add_argument("--clip-config", metavar="FILE",
                        help="for bare CLIP weights: their config.json / open_clip_config.json")
    parser.add_argument("--clip-arch", metavar="NAME",
                        help="for bare CLIP weights: a named architecture giving every field (e.g. ViT-H/14; "
                        "python -c 'import mmprompt.clip; print(mmprompt.clip.list_models())' lists them)")


def shortcut_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--clip``, ``--data-root``... flags as dotted overrides (applied after ``--set``)."""
    out: dict[str, Any] = {}
    pairs: list[tuple[str, Any]] = [
        ("clip.weights", getattr(args, "clip", None)), ("clip.activation", getattr(args, "clip_activation", None)),
        ("clip.config", getattr(args, "clip_config", None)), ("clip.architecture", getattr(args, "clip_arch", None)),
        ("data.root", getattr(args, "data_root", None)), ("data.shots", getattr(args, "shots", None)),
        ("device", getattr(args, "device", None)), ("precision", getattr(args, "precision", None)),
        ("data.num_workers", getattr(args, "num_workers", None)), ("data.seed", getattr(args, "seed", None)),
        ("data.subsample", getattr(args, "subsample", None)), ("output", getattr(args, "output", None)),
    ]
    for key, value in pairs:
        if value is not None:
            out[key] = value
    if getattr(args, "teacher", None):
        out["teacher.path"] = str(args.teacher)
    if getattr(args, "teacher_clip", None):
        out["teacher.clip"] = str(args.teacher_clip)
    if getattr(args, "no_progress", False):
        out["log.progress"] = False
    if getattr(args, "skip_corrupt", False):
        out["data.skip_corrupt"] = True
    for key, attr in (("data.classnames_file", "classnames"), ("data.split_file", "split_file")):
        if getattr(args, attr, None):
            out[key] = str(getattr(args, attr))
    if getattr(args, "descriptions", None):  # absolute: sweep workers may run elsewhere
        from pathlib import Path

        out["data.descriptions"] = str(Path(args.descriptions).absolute())
    return out


def quiet_other_ranks(ctx: Any) -> None:
    """Under torchrun, only rank 0 logs at INFO (the others would repeat every line)."""
    if not ctx.is_main:
        logging.getLogger("mmprompt").setLevel(logging.WARNING)


def list_presets_text() -> str:
    import yaml

    from ..config import list_presets, preset_path

    lines = []
    for name in list_presets():
        desc = (yaml.safe_load(preset_path(name).read_text()) or {}).get("description", "")
        lines.append(f"{name:<16} {desc}")
    return "\n".join(lines)


def resolve_config(args: argparse.Namespace, dataset: str | None, protocol: str = "base2novel") -> Any:
    """The run config from ``--config`` (or the method's default preset), ``--set`` and the shortcuts."""
    from ..config import load_config
    from ..protocols.common import default_preset

    preset = args.config
    method = getattr(args, "method", None)
    overrides = list(args.overrides)
    if preset is None:
        # the method's preset for the protocol, trained as the protocol trains it (base-to-novel: on the base
        # classes, evaluated on base and novel; a shared preset such as coop's says subsample: all)
        preset = default_preset(method or "maple", protocol)
        if protocol == "base2novel":
            overrides = ["data.subsample=base", *overrides]
        logger.info("no --config: %s's %s preset %s%s", method or "maple", protocol, preset,
                    " with data.subsample=base" if protocol == "base2novel" else "")
    cfg = load_config(preset, overrides, dataset=dataset)
    if method:
        from ..methods import canonical_method

        if canonical_method(method) != cfg.method.name:
            raise ValueError(f"--method {method} does not match the config's method {cfg.method.name!r} ({preset})")
    return cfg.with_overrides(shortcut_overrides(args))


# ------------------------------------------------------------------------------------------------ train
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--dataset", help="dataset name (eurosat, imagenet...; 'custom' with --data-root a folder)")
    parser.add_argument("--output", help="run folder")
    parser.add_argument("--seed", type=int, help="few-shot and run seed (default 1)")
    parser.add_argument("--subsample", choices=("all", "base", "new"), help="classes to train on")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output (or skip it when finished)")
    parser.add_argument("--stop-after-epochs", type=int, metavar="N",
                        help="end this session after N epochs (continue later with --resume)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although settings that change results differ (e.g. a lower "
                        "optim.lr after a NaN stop); the changes are recorded in log.jsonl and metrics.json")
    add_threads_argument(parser)
    add_custom_data_arguments(parser)
    add_teacher_argument(parser, train=True)
    add_torchscript_argument(parser)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for this process (as ``demo``, ``benchmark`` and ``reproduce``)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, i.e. every core; on a shared machine give a "
                        "small number, and the same number to repeat a run's digits)")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads when ``--threads`` was given."""
    if threads is not None:
        if threads < 1:
            from ..errors import UsageError

            raise UsageError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def add_custom_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--classnames FILE`` and ``--split-file FILE`` for ``--dataset custom``."""
    g = parser.add_argument_group("custom datasets (--dataset custom)")
    g.add_argument("--classnames", metavar="FILE",
                   help="class-names file: label order and names (needed for a CSV with integer labels)")
    g.add_argument("--split-file", metavar="FILE", help="a split file in CoOp's format (paths relative to the data)")


def add_teacher_argument(parser: argparse.ArgumentParser, train: bool = False) -> None:
    """``--teacher`` and ``--teacher-clip`` for methods that distil from a frozen teacher (PromptKD)."""
    g = parser.add_argument_group("teacher (methods that distil from one, e.g. promptkd)")
    g.add_argument("--teacher", metavar="RUN_DIR_OR_CKPT",
                   help="the frozen teacher: an mmprompt run or prompt checkpoint (e.g. promptsrc on ViT-L/14), or "
                   "an official teacher checkpoint; {dataset} is replaced by the dataset key"
                   + ("" if train else " (default: the one the checkpoint records)"))
    g.add_argument("--teacher-clip", metavar="WEIGHTS", default=None if train else "ViT-L/14",
                   help="the teacher's CLIP for an official teacher checkpoint (default ViT-L/14)")


def add_torchscript_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-torchscript", action="store_true",
                        help="read CLIP weights stored as a TorchScript archive that is not a registered OpenAI "
                        "release (this runs code stored in the file: only for files you trust)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.list_presets:
        print(list_presets_text())
        return 0
    from ..engine.clip_source import resolve_clip
    from ..engine.distributed import init_distributed
    from ..engine.fit import refuse_explicit_depths
    from ..engine.run import is_done, load_splits, run_experiment
    from ..engine.teacher import require_teacher
    from ..errors import UsageError
    from ..runlock import check_unlocked

    apply_threads(args.threads)
    cfg = resolve_config(args, args.dataset)
    if not cfg.data.dataset or not cfg.data.root or not cfg.output:
        raise UsageError("--dataset, --data-root and --output are needed (or data.dataset, data.root, output in "
                         "the config)")
    require_teacher(cfg)  # before any weights or data are read
    output = Path(cfg.output)
    check_unlocked(output)  # a run in progress there: say so, not "pass --resume"
    started = output.exists() and any((output / f).exists() for f in ("checkpoint", "metrics.json", "prompts.json"))
    if started and not args.resume:
        state = "a finished run" if is_done(output) else "an unfinished run"
        raise UsageError(f"{output} holds {state}; pass --resume to continue it, or choose another --output")
    ctx = init_distributed(cfg.device)
    quiet_other_ranks(ctx)
    clip, info = resolve_clip(cfg.clip.weights, cfg.clip.activation, ctx.device,
                              allow_torchscript=args.allow_torchscript, config=cfg.clip.config,
                              architecture=cfg.clip.architecture)
    refuse_explicit_depths(cfg, clip, args.overrides)
    splits = load_splits(cfg, ctx=ctx)
    evals: dict[str, Any] = {"test": splits}
    if cfg.data.subsample == "base":
        evals = {"base": splits, "novel": load_splits(cfg, subsample="new", ctx=ctx)}
    metrics = run_experiment(cfg, clip, info, output, train_splits=splits, evals=evals, ctx=ctx,
                             resume=True, stop_after_epochs=args.stop_after_epochs, progress=cfg.log.progress,
                             allow_config_change=args.allow_config_change)
    if metrics is None:
        logger.info("stopped early; continue with: mmprompt train ... --output %s --resume", output)
        return 0
    if ctx.is_main:
        for name, res in metrics["eval"].items():
            print(f"{name}: top-1 {res['accuracy']:.2f}% ({res['correct']}/{res['total']}), "
                  f"mean per-class {res['mean_per_class_accuracy']:.2f}%")
        if metrics.get("transductive"):
            print(f"transductive: trained on {metrics.get('train_images')} unlabelled images of all "
                  f"{cfg.data.dataset} classes (not comparable with inductive runs)")
        print(f"prompts and metrics in {output}")
    return 0
