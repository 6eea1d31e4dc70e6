"""Speed and memory of a prompt learner: training step, evaluation and the image encoder alone.

For each class count, two paths are measured with the same weights, prompts, images and labels:

* ``default``: what mmprompt runs by default: each prompt computed up to its EOT, packed, the
  positions all class prompts share (SOT, context, common words) computed once, class prompts in
  (length-sorted) chunks with activation checkpointing when they are many, class text
  features computed once per evaluation (``class_text_features``) and evaluation in inference mode.
* ``reference``: what the official code computes: 77-token prompts (``truncate_text=False``), every
  position of every class prompt computed (``share_text_prefix=False``), no chunking, and the class
  text re-encoded for every evaluation batch (``predict_logits(x, None)``).

Each (class count, path) runs in a fresh child process (``python -m mmprompt.bench --child``), so
peak memories do not mix: on CPU the peak resident set size above the size just before the first
training step (``VmHWM`` reset through ``/proc/self/clear_refs``), on CUDA
``torch.cuda.max_memory_allocated`` after a reset. The parent kills a child whose resident set
exceeds ``memory_limit_gb`` (a machine may be shared) and reports it as out of memory.

Class names are synthetic but realistic (:mod:`.synthetic`); the timed steps are in :mod:`.probe`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..clip.config import CLIPConfig, get_config
from ..clip.model import CLIP, build_model
from ..engine.precision import autocast_context, check_precision
from ..methods.base import PromptLearner
from ..methods.contract import EncoderOptions
from .probe import Probe, measure_eval, measure_train
from .synthetic import CLASSNAME_WORDS as CLASSNAME_WORDS  # with WORDS_PER_NAME: re-exported, they lived here
from .synthetic import SYNTHETIC_DESCRIPTIONS, synthetic_classnames, synthetic_descriptions
from .synthetic import WORDS_PER_NAME as WORDS_PER_NAME
from .system import PeakMemory, load_average, machine_info, memory_limit_bytes, watch_memory

logger = logging.getLogger(__name__)

SCHEMA = "mmprompt.bench/1"
PATHS: tuple[str, ...] = ("default", "reference")
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_RESULT_MARKER = "@@mmprompt-bench-result@@"


@dataclass
class BenchSettings:
    """What to measure (one run measures every class count on both paths)."""

    method: str = "maple"
    arch: str = "ViT-B/16"
    classes: list[int] = field(default_factory=lambda: [10, 100, 1000])
    batch: int = 4
    """Training batch size."""
    precision: str = "fp32"
    """fp32, or bf16 / fp16 autocast around the forward pass."""
    random_weights: bool = False
    """Randomly initialised CLIP of ``arch`` instead of pretrained weights (same speed)."""
    weights: str = ""
    """Name or path given to ``mmprompt.clip.load`` (default: ``arch``); ignored with random weights."""
    steps: int = 3
    """Timed training steps (the median is reported)."""
    warmup: int = 1
    """Untimed training steps before the timed ones."""
    eval_images: int = 200
    eval_batch: int = 100
    """Evaluation batch size (the official test batch is 100)."""
    text_chunk_size: int = 0
    """Default path: classes per text chunk (0: the learner's automatic choice)."""
    method_options: dict[str, Any] = field(default_factory=dict)
    """Other method config fields, for both paths."""
    device: str = ""
    """cpu or cuda (empty: cuda when available)."""
    seed: int = 0
    threads: int = 0
    """CPU threads (``torch.set_num_threads``) in the measuring processes (0: torch's default)."""
    isolate: bool = True
    """Run each (class count, path) in a fresh child process."""
    memory_limit_gb: float = 0.0
    """Kill a CPU child whose resident set exceeds this (0: 80% of the memory available at start)."""
    teacher_arch: str = ""
    """Methods that distil from a teacher (PromptKD): the teacher CLIP's shape, random weights, with the method's
    official teacher design (empty: ViT-L/14 for a ViT-B student, else ``arch``). The reference path re-encodes
    the teacher's class text at every call, as the official code does."""
    fp32_baseline: bool = True
    """With bf16 / fp16: also time the default path's training step in fp32 (``fp32_default``) and
    report the ratio (``precision_speedup``), measured in the same run."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not self.classes or any(c < 1 for c in self.classes):
            raise ValueError(f"classes must be positive counts, got {self.classes}")
        for name in ("batch", "steps", "eval_images", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.text_chunk_size < 0 or self.threads < 0:
            raise ValueError("warmup, text_chunk_size and threads must be >= 0")
        if not self.device:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PathResult:
    """The figures of one path at one class count."""

    path: str
    classes: int
    config: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    """Prompt lengths in tokens (SOT..EOT): min, mean, max; and ``run``, the length the encoder runs."""
    train_step_s: float | None = None
    """Median training step: forward, loss, backward, SGD step."""
    train_step_times_s: list[float] = field(default_factory=list)
    first_loss: float | None = None
    """Loss of the first training step (equal on both paths: same weights, prompts and inputs)."""
    eval_images_per_s: float | None = None
    """Evaluation throughput, including the one-off class text features (default path)."""
    eval_text_features_s: float | None = None
    """Time of ``class_text_features()`` (default path; the reference re-encodes per batch)."""
    image_encoder_images_per_s: float | None = None
    """Plain ``clip.encode_image`` in the same process, batches interleaved with evaluation's."""
    train_peak_memory_bytes: int | None = None
    eval_peak_memory_bytes: int | None = None
    memory_measure: str = ""
    load_average: list[float] = field(default_factory=list)
    """1-minute load average at the start and at the end (other jobs on the machine skew timings)."""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----- one path, in this process ------------------------------------------------------------------
def build_clip(settings: BenchSettings, device: torch.device) -> CLIP:
    """A frozen CLIP: random weights of ``arch``, or ``mmprompt.clip.load`` (imported only then)."""
    if settings.random_weights:
        torch.manual_seed(settings.seed)
        model = build_model(get_config(settings.arch))
    else:
        try:
            from ..clip.weights import load
        except ImportError as exc:
            raise RuntimeError(
                f"pretrained weights need mmprompt.clip.weights.load, which cannot be imported ({exc}); "
                "use --random-weights to benchmark with random weights (the speed is the same)"
            ) from exc
        if (settings.weights or "").lower() == "demo":
            from ..engine.clip_source import resolve_clip

            model = resolve_clip("demo")[0]
        else:
            model = load(settings.weights or settings.arch)
    return model.to(device).eval().requires_grad_(False)


DEPTH_FIELDS: dict[str, str] = {"depth": "both", "depth_text": "text", "depth_vision": "vision"}


def path_encoder(settings: BenchSettings, path: str) -> EncoderOptions:
    """The text-encoder options of a path: the official computation, or mmprompt's default."""
    if path == "reference":
        return EncoderOptions(truncate_text=False, share_text_prefix=False, text_chunk_size=0, text_chunk_tokens=0)
    if path == "default":
        return EncoderOptions(text_chunk_size=settings.text_chunk_size)
    raise ValueError(f"unknown path {path!r}; known: {PATHS}")


def path_config(settings: BenchSettings, path: str, clip_config: CLIPConfig | None = None) -> dict[str, Any]:
    """The method config values of a path (fields the method's config lacks are left out).

    Prompt depths the user did not set are cut to the model's layers when its default is deeper
    (MaPLe's J = 9 on the 4-layer ``tiny`` test model), with a warning; the JSON records the config.
    """
    from ..methods import get_method

    path_encoder(settings, path)  # checks the path
    spec = get_method(settings.method)
    values = dict(settings.method_options)
    if path == "reference":  # the official computation of the method's own parts (unless the user set them)
        values.update({k: v for k, v in spec.reference_options.items() if k not in settings.method_options})
    fields = {f.name: f for f in dataclasses.fields(spec.config)}
    values = {k: v for k, v in values.items() if k in fields or k in settings.method_options}
    if clip_config is not None:
        t, v = clip_config.text.layers, clip_config.vision.layers
        limits = {"both": min(t, v), "text": t, "vision": v}
        for name, tower in DEPTH_FIELDS.items():
            default = fields[name].default if name in fields else None
            if isinstance(default, int) and name not in settings.method_options and default > limits[tower]:
                log = logger.warning if path == "default" else logger.debug
                log(
                    "%s: %s %d is deeper than the model; using %d",
                    settings.method,
                    name,
                    default,
                    limits[tower],
                )
                values[name] = limits[tower]
    return values


def check_settings(settings: BenchSettings) -> None:
    """Fail early (in the parent) on an unknown method or architecture or an invalid method config."""
    from ..methods import make_config

    if settings.random_weights:
        clip_config = get_config(settings.arch)
    else:  # the weights load here once, so that a missing file fails now, not in every child process
        clip_config = build_clip(settings, torch.device("cpu")).config
    with torch.device("meta"):
        clip = CLIP(clip_config)
    for path in PATHS:
        make_config(settings.method, path_config(settings, path, clip_config)).check_model(clip)


def _prompt_tokens(learner: PromptLearner, truncate: bool, context: int, shared: int = 0) -> dict[str, float]:
    """Prompt lengths (SOT..EOT) min / mean / max, the longest run (``run``), the leading positions
    computed once for all classes (``shared``), the tokens the text encoder runs per class
    (``encoded_per_class``) and in how many checkpointed chunks, with the learner's settings."""
    eot = getattr(learner, "eot", None)
    if not isinstance(eot, torch.Tensor):
        return {}
    lengths = eot.cpu() + 1
    chunks = learner.text_chunks(eot, context) or [torch.arange(len(lengths))]
    if truncate:  # packed: each prompt up to its EOT, the shared prefix once per chunk
        encoded = sum(int((lengths[idx.cpu()] - shared).sum()) + shared for idx in chunks)
    else:
        encoded = len(lengths) * context
    return {
        "min": float(lengths.min()),
        "mean": round(float(lengths.float().mean()), 2),
        "max": float(lengths.max()),
        "run": float(lengths.max()) if truncate else float(context),
        "shared": float(shared),
        "encoded_per_class": round(encoded / len(lengths), 2),
        "chunks": float(len(chunks)),
    }


PHASES: tuple[str, ...] = ("train", "eval")


def measure_path(
    settings: BenchSettings, classes: int, path: str, phases: Sequence[str] = PHASES
) -> PathResult:
    """Measure one path at one class count in this process (see :func:`run_isolated` for isolation)."""
    from ..methods import DatasetContext, create_learner, get_method, make_config

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    result = PathResult(path=path, classes=classes, load_average=[load_average()])
    check_precision(settings.precision, device)

    def autocast() -> Any:
        return autocast_context(settings.precision, device)

    clip = build_clip(settings, device)
    config = make_config(settings.method, path_config(settings, path, clip.config))
    encoder = path_encoder(settings, path)
    result.config = {**config.to_dict(), **encoder.to_dict()}
    torch.manual_seed(settings.seed + 1)
    names = synthetic_classnames(classes, settings.seed)
    dataset = None
    if get_method(settings.method).learner.needs_descriptions(config):
        dataset = DatasetContext(descriptions=synthetic_descriptions(names, seed=settings.seed))
        result.config["synthetic_descriptions_per_class"] = SYNTHETIC_DESCRIPTIONS
    from .teacher import bench_teacher

    teacher = bench_teacher(settings, path, config, encoder, names, device)
    learner = create_learner(settings.method, clip, names, config, encoder=encoder, dataset=dataset,
                             teacher=teacher).to(device)
    memory = PeakMemory(device)
    result.memory_measure = memory.kind
    probe = Probe(settings, learner, autocast, memory, result)
    if "train" in phases:
        measure_train(probe)
    if "eval" in phases:
        measure_eval(probe)
    shared = learner.last_text_shared_prefix  # what the measured steps used
    result.prompt_tokens = _prompt_tokens(learner, encoder.truncate_text, clip.config.text.context_length, shared)
    result.load_average.append(load_average())
    return result


# ----- isolation in child processes ---------------------------------------------------------------
def _run_child(settings: BenchSettings, classes: int, path: str, phase: str) -> PathResult:
    job = json.dumps({"settings": settings.to_dict(), "classes": classes, "path": path, "phase": phase})
    limit = memory_limit_bytes(settings.memory_limit_gb) if settings.device == "cpu" else 0
    cmd = [sys.executable, "-m", "mmprompt.bench", "--child"]
    if logger.isEnabledFor(logging.DEBUG):
        cmd.append("--verbose")
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
    flag: dict[str, int] = {}
    watcher = threading.Thread(target=watch_memory, args=(proc, limit, flag), daemon=True)
    watcher.start()
    out, err = proc.communicate(job)
    watcher.join()
    for line in err.splitlines():
        logger.debug("child %s/%d/%s: %s", path, classes, phase, line)
    marked = [line for line in out.splitlines() if line.startswith(_RESULT_MARKER)]
    if marked:
        return PathResult(**json.loads(marked[-1][len(_RESULT_MARKER) :]))
    result = PathResult(path=path, classes=classes, config=path_config(settings, path))
    if flag.get("killed"):
        result.error = f"{phase}: out of memory: resident set exceeded the limit of {limit / 2**30:.1f} GiB"
        result.memory_measure = "lower_bound_peak_rss"
        if phase == "train":
            result.train_peak_memory_bytes = flag.get("peak")
        else:
            result.eval_peak_memory_bytes = flag.get("peak")
    else:
        tail = "\n".join(err.strip().splitlines()[-5:])
        result.error = f"{phase}: child process failed (exit {proc.returncode}): {tail}"
    return result


EVAL_FIELDS = (
    "eval_images_per_s",
    "eval_text_features_s",
    "image_encoder_images_per_s",
    "eval_peak_memory_bytes",
)


def run_isolated(settings: BenchSettings, classes: int, path: str) -> PathResult:
    """:func:`measure_path`, training and evaluation each in a fresh ``python -m mmprompt.bench --child``."""
    result = _run_child(settings, classes, path, "train")
    evaluation = _run_child(settings, classes, path, "eval")
    for name in EVAL_FIELDS:
        setattr(result, name, getattr(evaluation, name))
    result.config = result.config or evaluation.config
    result.prompt_tokens = result.prompt_tokens or evaluation.prompt_tokens
    result.load_average = result.load_average + evaluation.load_average
    result.error = "; ".join(e for e in (result.error, evaluation.error) if e)
    return result


def _child_main() -> int:
    job = json.loads(sys.stdin.read())
    settings = BenchSettings(**job["settings"])
    phases = [job["phase"]] if job.get("phase") else list(PHASES)
    try:
        result = measure_path(settings, job["classes"], job["path"], phases)
    except (RuntimeError, MemoryError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        oom = "out of memory" in message.lower() or "can't allocate" in message.lower()
        error = "/".join(phases) + ": " + ("out of memory: " if oom else "") + message
        result = PathResult(
            path=job["path"], classes=job["classes"], config=path_config(settings, job["path"]), error=error
        )
    sys.stdout.write(_RESULT_MARKER + json.dumps(result.to_dict()) + "\n")
    return 0


# ----- the whole run ------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def compare_paths(default: PathResult, reference: PathResult) -> dict[str, Any]:
    """Speed-ups and memory fraction of the default path over the reference path."""
    ref_mem = reference.train_peak_memory_bytes
    fraction = _ratio(default.train_peak_memory_bytes, ref_mem)
    loss_diff = None
    if default.first_loss is not None and reference.first_loss is not None:
        loss_diff = abs(default.first_loss - reference.first_loss)
    return {
        "train_speedup": _ratio(reference.train_step_s, default.train_step_s),
        "eval_speedup": _ratio(default.eval_images_per_s, reference.eval_images_per_s),
        "train_memory_fraction": fraction,
        "train_memory_fraction_is_upper_bound": bool(reference.error and fraction is not None),
        "eval_vs_image_encoder": _ratio(default.eval_images_per_s, default.image_encoder_images_per_s),
        "first_loss_abs_diff": loss_diff,
        "precision_speedup": None,
    }


def iter_benchmark(settings: BenchSettings) -> Iterator[dict[str, Any]]:
    """Measure every class count (default path, then reference path); yields one entry per count."""
    measure = run_isolated if settings.isolate else measure_path
    for classes in settings.classes:
        entry: dict[str, Any] = {"classes": classes}
        for path in PATHS:
            logger.info("measuring %s, %d classes, %s path", settings.method, classes, path)
            res = measure(settings, classes, path)
            if res.error:
                logger.warning("%s path, %d classes: %s", path, classes, res.error)
            entry[path] = res.to_dict()
        entry["comparison"] = compare_paths(PathResult(**entry["default"]), PathResult(**entry["reference"]))
        if settings.precision != "fp32" and settings.fp32_baseline:
            logger.info("measuring %s, %d classes, default path in fp32 (training step)", settings.method, classes)
            fp32 = dataclasses.replace(settings, precision="fp32")
            if settings.isolate:
                res = _run_child(fp32, classes, "default", "train")
            else:
                res = measure_path(fp32, classes, "default", ("train",))
            entry["fp32_default"] = res.to_dict()
            entry["comparison"]["precision_speedup"] = _ratio(res.train_step_s, entry["default"]["train_step_s"])
        yield entry


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    """The whole benchmark as one JSON-able document (``schema``, ``settings``, ``machine``, ``results``)."""
    from ..methods import canonical_method

    settings.method = canonical_method(settings.method)
    check_settings(settings)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "settings": settings.to_dict(),
        "classnames": "synthetic, 1-4 words (mmprompt.bench.synthetic_classnames)",
        "machine": machine_info(settings.device, settings.threads),
        "results": [],
    }
    doc["results"].extend(iter_benchmark(settings))
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """Child-process entry point: ``python -m mmprompt.bench --child`` reads one job on stdin."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--child" not in args:
        sys.stderr.write("use `mmprompt bench`; this module's entry point is for its child processes\n")
        return 2
    logging.basicConfig(
        level=logging.DEBUG if "--verbose" in args else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return _child_main()
