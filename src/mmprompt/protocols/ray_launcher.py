"""The Ray launcher: each run is a Ray task; results come back through Ray, so only data must be shared.

A task loads the CLIP (a registry name, a path or ``demo``), runs its :class:`RunSpec` into a node-local
staging folder (``<staging>/<hash of the run folder and config>``, where a retried task on the same node resumes from
the last epoch's checkpoint), and returns the run's files (everything but ``checkpoint/``). The driver
writes them into the sweep's output folder, ``metrics.json`` last and every file atomically. So only the
data root (and CLIP weights given as a path) must exist on every node, at the same path; the output folder
lives on the driver's machine. Files of a partly finished run (trained prompts whose target evaluations are
missing) travel to the task the same way.

Retries are the driver's own (``max_retries`` after the first attempt, for dead worker processes and
transient exceptions; a deterministic error such as a config, data or weights error is not retried), so
both launchers retry the same way. Ctrl-C cancels the tasks in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.clip_source import ClipSpec
from ..engine.distributed import DistContext
from ..fileio import atomic_write_bytes
from .launch import (
    LaunchError,
    LaunchOptions,
    Progress,
    SweepOutcome,
    attempts_for,
    clear_error,
    describe,
    write_error,
)
from .plan import RunSpec

__all__ = ["RayLauncher", "WORKER_FILE"]

logger = logging.getLogger(__name__)

WORKER_FILE = "worker.json"
"""Written in the staging folder while a task runs: its host and process id."""
_NOT_RETURNED = ("checkpoint/", WORKER_FILE, "error.log")


def staging_folder(root: str | None, run_folder: str, config: dict[str, Any] | None = None) -> Path:
    """The node-local folder where the run of ``run_folder`` (absolute, in the sweep's output) runs with
    ``config``: a changed config gets a fresh folder instead of resuming another config's checkpoint."""
    base = Path(root) if root else Path(tempfile.gettempdir()) / "mmprompt-staging"
    key = run_folder + "\n" + json.dumps(config or {}, sort_keys=True)
    return base / hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def folder_files(folder: Path) -> dict[str, bytes]:
    """The files under ``folder`` that travel with a run (not its checkpoint), by relative path."""
    out: dict[str, bytes] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not rel.startswith(_NOT_RETURNED) and not rel.endswith(".tmp"):
            out[rel] = path.read_bytes()
    return out


def write_files(folder: Path, files: dict[str, bytes], last: str = "metrics.json") -> None:
    """Write ``files`` under ``folder`` atomically, ``last`` after every other one."""
    for rel in sorted(files, key=lambda r: r == last):
        atomic_write_bytes(folder / rel, files[rel])


def run_task(spec_dict: dict[str, Any], clip_spec: str, clip_activation: str | None,
             seed_files: dict[str, bytes], staging_root: str | None) -> dict[str, Any]:
    """The body of a Ray task: run one spec in a staging folder and return its payload and files."""
    from ..engine.distributed import resolve_device
    from .common import ClipProvider
    from .plan import execute

    spec = RunSpec(**{**spec_dict, "targets": tuple(spec_dict["targets"])})
    stage = staging_folder(staging_root, spec.folder, spec.config)
    stage.mkdir(parents=True, exist_ok=True)
    for rel, data in seed_files.items():  # what the output folder already holds of this run
        if not (stage / rel).exists():
            atomic_write_bytes(stage / rel, data)
    host = socket.gethostname()
    atomic_write_bytes(stage / WORKER_FILE, json.dumps({"host": host, "pid": os.getpid()}).encode())
    ctx = DistContext(device=resolve_device(str(spec.config.get("device", "auto"))))
    payload = execute(spec, ClipProvider(clip_spec, clip_activation, ctx), ctx, folder=stage)
    files = folder_files(stage)
    shutil.rmtree(stage, ignore_errors=True)
    return {"payload": payload, "files": files, "host": host}


def probe_address(address: str, timeout: float) -> None:
    """Wait until something accepts a TCP connection at a Ray address (``HOST:PORT`` or ``ray://HOST:PORT``),
    for at most ``timeout`` seconds; Ray itself would keep retrying for many minutes. ``auto`` is left to Ray
    (it reads the address of a cluster started on this machine and fails at once without one)."""
    if address == "auto":
        return
    scheme, _, rest = address.rpartition("://")
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host, port_text = rest, "10001" if scheme == "ray" else "6379"
    try:
        port = int(port_text)
    except ValueError:
        raise LaunchError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT") from None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=max(0.1, min(5.0, left))):
                return
        except OSError as exc:
            if time.monotonic() + 1.0 >= deadline:
                raise LaunchError(f"no Ray cluster answers at --ray-address {address} after {timeout:g} s "
                                  f"({exc.strerror or exc}); start one with `ray start --head`, check the address, "
                                  "or give a longer --ray-timeout") from None
        time.sleep(1.0)


def loader_workers(config: dict[str, Any]) -> int:
    """The data-loader workers a run's config starts (``data.num_workers: null`` = what the machine has)."""
    from ..data.loading import default_workers

    value = (config.get("data") or {}).get("num_workers")
    return default_workers(None if value is None else int(value))

class RayLauncher:
    """Runs each spec as a Ray task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs."""

    def __init__(self, options: LaunchOptions) -> None:
        self.options = options

    def _connect(self) -> bool:
        """Join the cluster (or start a local one); True when this call started the connection."""
        import ray

        if ray.is_initialized():
            return False
        if self.options.ray_address:
            logger.info("connecting to the Ray cluster at %s", self.options.ray_address)
            probe_address(self.options.ray_address, self.options.ray_timeout)
            try:
                ray.init(address=self.options.ray_address, log_to_driver=False)
            except ConnectionError as exc:
                raise LaunchError(f"no Ray cluster at --ray-address {self.options.ray_address} ({exc}); start one "
                                  "with `ray start --head`, or leave out --ray-address for a local one") from None
        else:
            logger.info("starting a local Ray cluster on 127.0.0.1")
            ray.init(address="local", num_cpus=self.options.local_cpus, include_dashboard=False,
                     log_to_driver=False, _node_ip_address="127.0.0.1")
        return True

    def run(self, specs: Sequence[RunSpec], clip_spec: ClipSpec, clip_activation: str | None,
            ctx: DistContext) -> SweepOutcome:
        if ctx.enabled:
            raise LaunchError("the ray launcher runs each run as one process; do not start it under torchrun")
        if not isinstance(clip_spec, (str, Path)):
            raise LaunchError("the ray launcher loads the CLIP in each task: give it as a name (ViT-B/16, demo) "
                              "or a path, not as a model object")
        try:
            import ray
        except ImportError:
            raise LaunchError("the ray launcher needs Ray: pip install 'mmprompt[ray]'") from None
        opts = self.options
        started = self._connect()
        outcome = SweepOutcome()
        pending: dict[Any, tuple[RunSpec, int]] = {}
        bar: Progress | None = None
        try:
            resources = ray.cluster_resources()
            gpus = opts.gpus_per_run if opts.gpus_per_run is not None else (1.0 if resources.get("GPU") else 0.0)
            slots = math.floor(resources.get("CPU", 0) / opts.cpus_per_run)
            if gpus:
                slots = min(slots, math.floor(resources.get("GPU", 0) / gpus))
            logger.info("%d runs as Ray tasks (%.3g CPU, %.3g GPU each; %d at a time on this cluster)",
                        len(specs), opts.cpus_per_run, gpus, slots)
            workers = max(loader_workers(sp.config) for sp in specs)
            if workers + 1 > opts.cpus_per_run:
                logger.warning("runs start up to %d data-loader workers but ask Ray for %.3g CPUs each: give "
                               "--cpus-per-run %d (or --set data.num_workers=...) to keep the CPUs from being "
                               "oversubscribed", workers, opts.cpus_per_run, workers + 1)
            task = ray.remote(run_task)
            clip_arg = str(clip_spec)

            def submit(spec: RunSpec, attempt: int) -> None:
                seed = folder_files(Path(spec.folder))
                ref = task.options(num_cpus=opts.cpus_per_run, num_gpus=gpus, max_retries=0,
                                   name=f"mmprompt:{spec.name}").remote(
                    spec.to_dict(), clip_arg, clip_activation, seed, opts.staging_dir)
                pending[ref] = (spec, attempt)

            for spec in specs:
                submit(spec, 1)
            bar = Progress(len(specs), opts.progress)
            bar.update(0, min(len(pending), slots))
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                finished = 0
                for ref in ready:
                    spec, attempt = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        original = getattr(exc, "cause", None)
                        cause = describe(original or exc)
                        attempts = attempts_for(original, attempt, opts.max_retries)
                        write_error(spec, attempt, cause, str(exc))
                        logger.warning("%s failed (attempt %d of %d): %s", spec.name, attempt, attempts, cause)
                        if attempt < attempts:
                            submit(spec, attempt + 1)
                            continue
                        bar.failed += 1
                        outcome.failed.append({"run": spec.name, "folder": spec.folder, "cause": cause,
                                               "attempts": attempt})
                    else:
                        write_files(Path(spec.folder), result["files"])
                        if attempt > 1:
                            clear_error(spec)
                        outcome.payloads[spec.folder] = result["payload"]
                        logger.info("%s finished on %s", spec.name, result["host"])
                    finished += 1
                bar.update(finished, min(len(pending), slots))
        except KeyboardInterrupt:
            logger.warning("interrupted: cancelling %d runs in flight", len(pending))
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            if bar is not None:
                bar.close()
            if started:
                ray.shutdown()
        return outcome
