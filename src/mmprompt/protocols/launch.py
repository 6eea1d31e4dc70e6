"""Launchers: execute a sweep's :class:`~mmprompt.protocols.plan.RunSpec` list, here or on a Ray cluster.

Both launchers share everything but execution: finished runs are skipped (read back from their folders),
the data roots and the CLIP weights are checked before any run starts (:func:`preflight`), a run that
failed for a transient cause (a lost worker, a full disk) is tried again up to ``max_retries`` times, one
that failed for a deterministic cause (a config, data or weights error: :func:`is_deterministic`) is not,
and each failure is reported with its cause; one progress
bar counts the runs (ETA, runs in flight), and each run logs to ``<run>/run.log`` (a failed attempt's
traceback goes to ``<run>/error.log``). The protocols build results from the returned payloads the same
way whatever the launcher.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext
from ..fileio import atomic_write_bytes
from .plan import RunSpec, completed_payload, execute

__all__ = ["ERROR_LOG", "LaunchError", "LaunchOptions", "SequentialLauncher", "SweepOutcome", "get_launcher",
           "is_deterministic", "preflight", "run_specs"]

logger = logging.getLogger(__name__)

ERROR_LOG = "error.log"
LAUNCHERS = ("sequential", "ray")


class LaunchError(RuntimeError):
    """The launcher cannot run (no Ray installed, no cluster at the address, a CLIP it cannot ship)."""


@dataclass
class LaunchOptions:
    """How a sweep's runs are executed."""

    launcher: str = "sequential"
    """``sequential`` (one run after another in this process) or ``ray`` (one Ray task per run)."""
    ray_address: str | None = None
    """Ray: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` of a running cluster; None starts a local one."""
    ray_timeout: float = 60.0
    """Ray: seconds to keep trying to reach ``ray_address`` before giving up with a message naming it."""
    gpus_per_run: float | None = None
    """Ray: GPUs each run asks for (fractional packs several runs on one GPU; default 1 when the cluster
    has GPUs, else 0)."""
    cpus_per_run: float = 1.0
    """Ray: CPUs each run asks for (its main process and its loader workers)."""
    max_retries: int = 1
    """Attempts after the first for a failed run."""
    threads: int | None = None
    """torch threads per run (default: sequential keeps the process's setting; Ray uses ``cpus_per_run``)."""
    deterministic: bool = False
    """``torch.use_deterministic_algorithms(True)`` in every run."""
    progress: bool = True
    """One progress bar over the runs."""
    run_progress: bool = False
    """Per-run progress bars (sequential only)."""
    local_cpus: int | None = None
    """Ray, local cluster only: the CPUs it offers (default: all)."""
    staging_dir: str | None = None
    """Ray: node-local folder where a task writes its run before returning it (default: the temp dir)."""

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r}; expected one of {', '.join(LAUNCHERS)}")
        if not self.ray_timeout > 0:
            raise ValueError(f"ray_timeout must be > 0 seconds, got {self.ray_timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.cpus_per_run <= 0 or (self.gpus_per_run is not None and self.gpus_per_run < 0):
            raise ValueError("cpus_per_run must be > 0 and gpus_per_run >= 0")


@dataclass
class SweepOutcome:
    """Payloads of the finished runs (by run folder) and the runs that failed for good."""

    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    """``{"run", "folder", "cause", "attempts"}`` per failed run."""


class Progress:
    """One bar over the runs to do: done / total, ETA, runs in flight, failures."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.failed = 0
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="runs", unit="run", dynamic_ncols=True)

    def update(self, finished: int, in_flight: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(in_flight=in_flight, failed=self.failed, refresh=False)
            self.bar.update(finished)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_error(spec: RunSpec, attempt: int, cause: str, detail: str) -> None:
    """Record a failed attempt in ``<run>/error.log`` (whole file rewritten atomically)."""
    path = Path(spec.folder) / ERROR_LOG
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = f"{old}== attempt {attempt}: {cause}\n{detail.rstrip()}\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def clear_error(spec: RunSpec) -> None:
    (Path(spec.folder) / ERROR_LOG).unlink(missing_ok=True)


def is_deterministic(exc: BaseException | None) -> bool:
    """True for an error that would happen again on a retry: bad config, missing or corrupt data, weights or
    checkpoint, a missing or forbidden file, a NaN loss. Lost workers, full disks, I/O errors and other failures
    are worth retrying."""
    from ..errors import EXIT_CONFIG, EXIT_DATA, EXIT_WEIGHTS, classify_error

    if exc is None:
        return False
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True  # a missing or forbidden input does not appear on a retry (a full disk or an I/O error may pass)
    info = classify_error(exc)
    if info is None:
        return False
    return info.code in (EXIT_CONFIG, EXIT_DATA, EXIT_WEIGHTS) or info.category == "training stopped"  # a NaN loss


def attempts_for(exc: BaseException | None, attempt: int, max_retries: int) -> int:
    """How many attempts a run gets, given the error of its attempt number ``attempt``."""
    return attempt if is_deterministic(exc) else max_retries + 1


def preflight(specs: Sequence[RunSpec], clip_spec: ClipSpec) -> None:
    """Before any run starts: every benchmark dataset's folder under its data root, and CLIP weights given
    as a path, must exist. Raises one error listing every problem (nothing has run)."""
    from ..data import DatasetNotFoundError, get_dataset_info
    from ..data.build import diagnose_root
    from ..engine.run import is_done

    problems: list[str] = []
    wanted = {(d, str(s.config.get("data", {}).get("root"))) for s in specs for d in (
        *(() if s.targets and is_done(Path(s.folder)) else (s.dataset,)),  # the source run is trained already
        *s.targets)}
    for dataset, root in sorted(wanted):
        try:
            info = get_dataset_info(dataset)
        except KeyError:  # a custom dataset: its own check runs with the run
            continue
        if not (Path(root).expanduser() / info.folder).is_dir():
            problems.append(diagnose_root(info, root))
    if problems:
        raise DatasetNotFoundError(f"no run was started: {'; '.join(dict.fromkeys(problems))}")
    if isinstance(clip_spec, (str, Path)) and str(clip_spec).lower() != "demo":
        from ..clip.weights import get_pretrained

        try:
            get_pretrained(str(clip_spec))
        except KeyError:
            if not Path(clip_spec).expanduser().exists():
                raise FileNotFoundError(f"no run was started: the CLIP weights {clip_spec} do not exist (not a "
                                        "file, a folder or a registry name; see `mmprompt weights list`)") from None


def describe(exc: BaseException) -> str:
    """A one-line cause: the exception's type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class SequentialLauncher:
    """One run after another in this process, sharing one loaded CLIP (torchrun: every rank runs each)."""

    def __init__(self, options: LaunchOptions) -> None:
        self.options = options

    def run(self, specs: Sequence[RunSpec], clip_spec: ClipSpec, clip_activation: str | None,
            ctx: DistContext) -> SweepOutcome:
        from .common import ClipProvider

        clip = ClipProvider(clip_spec, clip_activation, ctx)
        if specs:
            clip.get()  # loaded once up front: weights that cannot load stop the sweep before any run
        outcome = SweepOutcome()
        bar = Progress(len(specs), self.options.progress and ctx.is_main)
        try:
            for spec in specs:
                attempts = 1 if ctx.enabled else self.options.max_retries + 1  # ranks must agree: no retry
                attempt = 0
                while attempt < attempts:
                    attempt += 1
                    bar.update(0, 1)
                    try:
                        payload = execute(spec, clip, ctx, progress=self.options.run_progress)
                    except Exception as exc:  # noqa: BLE001 - reported with its cause, never swallowed
                        if ctx.enabled:
                            raise
                        attempts = attempts_for(exc, attempt, attempts - 1)
                        cause = describe(exc)
                        logger.warning("%s failed (attempt %d of %d): %s", spec.name, attempt, attempts, cause)
                        write_error(spec, attempt, cause, traceback.format_exc())
                        if attempt == attempts:
                            bar.failed += 1
                            outcome.failed.append({"run": spec.name, "folder": spec.folder, "cause": cause,
                                                   "attempts": attempt})
                        continue
                    if attempt > 1 and ctx.is_main:
                        clear_error(spec)
                    outcome.payloads[spec.folder] = payload
                    break
                bar.update(1, 0)
        finally:
            bar.close()
        return outcome


def get_launcher(options: LaunchOptions) -> Any:
    if options.launcher == "ray":
        from .ray_launcher import RayLauncher

        return RayLauncher(options)
    return SequentialLauncher(options)


def run_specs(
    specs: Sequence[RunSpec],
    clip_spec: ClipSpec,
    clip_activation: str | None,
    ctx: DistContext,
    options: LaunchOptions | None = None,
    stop_after_runs: int | None = None,
) -> SweepOutcome:
    """Execute the unfinished runs of ``specs`` with the chosen launcher; finished ones are read back.

    Each spec gets the launcher's thread count and deterministic setting (Ray's default thread count is
    ``cpus_per_run``). ``stop_after_runs`` runs only that many unfinished runs (the sweep can resume).
    """
    import torch

    options = options or LaunchOptions()
    threads = options.threads
    if threads is None:
        threads = max(1, int(options.cpus_per_run)) if options.launcher == "ray" else torch.get_num_threads()
    specs = [s.with_threads(threads, options.deterministic) for s in specs]
    outcome = SweepOutcome()
    todo = []
    for spec in specs:
        payload = completed_payload(spec)
        if payload is None:
            todo.append(spec)
        else:
            outcome.payloads[spec.folder] = payload
    if stop_after_runs is not None:
        todo = todo[:stop_after_runs]
    logger.info("%d runs: %d finished, %d to run (launcher %s)", len(specs), len(specs) - len(todo), len(todo),
                options.launcher)
    if todo:
        preflight(todo, clip_spec)
        done = get_launcher(options).run(todo, clip_spec, clip_activation, ctx)
        outcome.payloads.update(done.payloads)
        outcome.failed.extend(done.failed)
    return outcome


def plan_per_dataset(opts: Any, protocol: str, subsample: str) -> list[RunSpec]:
    """One spec per (method, dataset, seed), in that order, each training on ``subsample`` classes."""
    from .common import run_config, run_folder

    setting = f"{protocol}-{opts.shots}shots"
    output = Path(opts.output).absolute()
    return [
        RunSpec(protocol, method, dataset, int(seed), str(run_folder(output, method, dataset, setting, seed)),
                run_config(opts, method, protocol, dataset, seed, subsample=subsample).to_dict())
        for method in opts.methods for dataset in opts.datasets for seed in opts.seeds
    ]


def run_and_write(
    opts: Any,
    protocol: str,
    specs: list[RunSpec],
    metrics: Any,
    launch: LaunchOptions | None,
    extra: dict[str, Any],
    stop_after_runs: int | None = None,
    averaged: list[str] | None = None,
    roles: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Execute ``specs`` with ``launch``, aggregate the sweep's results (the average over ``averaged``,
    default the sweep's datasets) and write them (main process)."""
    from ..engine.distributed import barrier
    from ..runlock import RunLock
    from .plan import sweep_results
    from .results import write_results

    launch = launch or LaunchOptions(progress=opts.progress)
    with RunLock(opts.output, enabled=opts.ctx.is_main, command=f"{protocol} sweep"):  # one sweep per folder
        outcome = run_specs(specs, opts.clip_spec, opts.clip_activation, opts.ctx, launch, stop_after_runs)
        kwargs = {"roles": roles} if roles is not None else {}
        extra = {"seeds": [int(s) for s in opts.seeds], "shots": opts.shots, **extra}
        results = sweep_results(protocol, specs, outcome, metrics, averaged or list(opts.datasets), extra=extra,
                                **kwargs)
        if opts.ctx.is_main:
            write_results(results, opts.output)
    barrier(opts.ctx)
    return results
