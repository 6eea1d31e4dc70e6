"""Run configuration: typed dataclasses, YAML presets and dotted command-line overrides.

A run is described by a :class:`RunConfig` with one section per concern (``method``, ``data``, ``optim``,
``clip``, ``log``) plus a few top-level fields. Presets for the paper's settings live as YAML files in
``mmprompt/configs/`` and are loaded by name (``maple_b2n``) or by path::

    cfg = load_config("maple_b2n", overrides=["optim.lr=0.001", "method.n_ctx=4"])

Overrides are ``dotted.key=value`` with the value parsed as a YAML scalar (``4`` -> int, ``1e-3`` ->
float, ``true`` -> bool, ``null`` -> None). Unknown keys are an error naming the key. Method options are
checked against the method's own config class (:func:`mmprompt.methods.make_config`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError, check_fields, check_int, check_number, excerpt, is_number
from .methods.contract import EncoderOptions
from .names import name_key
from .yamlio import YAML_FLOAT, load_yaml_text, read_yaml

__all__ = [
    "PRECISIONS",
    "ClipSection",
    "ConfigError",
    "DataSection",
    "LogSection",
    "MethodSection",
    "OptimSection",
    "RunConfig",
    "apply_overrides",
    "list_presets",
    "load_config",
    "parse_override",
    "preset_path",
    "read_yaml",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
SUBSAMPLES: tuple[str, ...] = ("all", "base", "new")


# ----------------------------------------------------------------------------------------------- sections
@dataclass
class MethodSection:
    """Which prompt learner to train and its options (the fields of that method's config class)."""

    name: str = "maple"
    """Method name: zeroshot, coop, cocoop, vpt, language_only, ivlp or maple (aliases accepted)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method options, e.g. ``n_ctx``, ``depth``, ``ctx_init``; written flat beside ``name`` in YAML."""

    def __post_init__(self) -> None:
        from .methods import canonical_method, make_config

        try:
            self.name = canonical_method(self.name)
        except KeyError as exc:
            raise ConfigError(f"method.name: {exc.args[0]}") from None
        try:
            make_config(self.name, self.options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"method: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodSection:
        d = dict(d)
        name = d.pop("name", "maple")
        return cls(name=name, options=d)


@dataclass
class DataSection:
    """Which dataset, which shots and classes, and how images are loaded."""

    dataset: str | None = None
    """Dataset key (``eurosat``, ``imagenet``...); set per run by the command or the protocol."""
    root: str | None = None
    """Data root holding one folder per dataset in the official layout."""
    shots: int = 16
    """Training images per class (few-shot sampling); 0 or less keeps every image."""
    seed: int = 1
    """Seed of the few-shot selection and of the run (prompt initialisation, data order, augmentation)."""
    subsample: str = "all"
    """Classes to train on: ``all``, ``base`` (first half of the sorted labels) or ``new``."""
    num_workers: int | None = None
    """DataLoader worker processes (0: load in the main process; None: what the machine has, see
    :func:`mmprompt.engine.loader.default_workers`)."""
    skip_corrupt: bool = False
    """Skip unreadable images (listed, and recorded in metrics.json) instead of stopping with an error."""
    classnames_file: str | None = None
    """Custom datasets: a class-names file (label order and names), e.g. for a CSV with integer labels."""
    split_file: str | None = None
    """Custom datasets: a split file in CoOp's format (paths relative to the dataset folder)."""
    descriptions: str | None = None
    """Class descriptions for the methods that read them (MMA++'s cupl prompts): a JSON file (class name ->
    list of sentences), or a folder with one ``<dataset>.json`` per dataset (see :mod:`mmprompt.descriptions`)."""
    crop_scale_min: float = 0.08
    """Smallest area fraction of the training RandomResizedCrop (the recipe's 0.08; the scale's upper end is 1)."""

    def __post_init__(self) -> None:
        self.crop_scale_min = check_number("data.crop_scale_min", self.crop_scale_min, above=0, maximum=1)
        if self.subsample not in SUBSAMPLES:
            raise ConfigError(f"data.subsample must be one of {SUBSAMPLES}, got {self.subsample!r}")
        if self.num_workers is not None:
            check_int("data.num_workers", self.num_workers, minimum=0)
        check_int("data.shots", self.shots)
        check_int("data.seed", self.seed)


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("epoch_cosine", "iter_cosine")
"""``optim.schedule``: the cosine steps once per epoch (Dassl) or once per optimizer step (CLIP-LoRA)."""


@dataclass
class OptimSection:
    """SGD (or Adam) with a constant warm-up and a cosine schedule, per epoch (Dassl's defaults) or per
    iteration (``schedule: iter_cosine``), over ``epochs`` passes or a number of ``iterations``."""

    lr: float = 0.0035
    """Base learning rate (after warm-up)."""
    optimizer: str = "sgd"
    """``sgd`` (Dassl's default), ``adam`` (torch Adam, weight decay as L2 on the gradient, as Dassl's) or
    ``adamw`` (torch AdamW, decoupled weight decay: MMRL, CLIP-LoRA)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas (Dassl's ADAM_BETA1 / ADAM_BETA2)."""
    adam_eps: float = 1e-8
    """Adam's eps (TCP's README edits Dassl's 1e-8 to 1e-3)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    """Applies to the prompt parameters."""
    epochs: int | None = 5
    """Total epochs, warm-up included; null: the run's length is ``iterations`` (or ``iterations_per_shot``)."""
    warmup_epochs: int = 1
    """Epochs at the constant warm-up rate (0: none)."""
    warmup_lr: float = 1e-5
    """Constant learning rate during warm-up."""
    batch_size: int = 4
    """Global training batch per optimizer step and accumulation micro-step (split over processes)."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed before one optimizer step (effective batch x this)."""
    max_grad_norm: float | None = None
    """Clip the gradient norm to this value (None: no clipping, as in the official code)."""
    schedule: str = "epoch_cosine"
    """``epoch_cosine``: the rate changes once per epoch (Dassl); ``iter_cosine``: after every optimizer step,
    as torch's ``CosineAnnealingLR(T_max=total iterations, eta_min=min_lr)`` stepped per iteration (CLIP-LoRA);
    a warm-up then lasts ``warmup_epochs`` x the steps of an epoch."""
    min_lr: float = 0.0
    """The floor the cosine anneals to (``eta_min``; Dassl's 0, CLIP-LoRA's 1e-6)."""
    iterations: int | None = None
    """With ``epochs: null``: train for this many optimizer steps, restarting the shuffled data as often as needed."""
    iterations_per_shot: int | None = None
    """With ``epochs: null``: train for this many optimizer steps per shot (``500`` x ``data.shots``: CLIP-LoRA)."""

    def __post_init__(self) -> None:
        self.lr = check_number("optim.lr", self.lr, above=0)
        self.warmup_lr = check_number("optim.warmup_lr", self.warmup_lr, above=0)
        self.momentum = check_number("optim.momentum", self.momentum, minimum=0)
        self.weight_decay = check_number("optim.weight_decay", self.weight_decay, minimum=0)
        if self.epochs is not None:
            check_int("optim.epochs", self.epochs, minimum=1)  # null: the run length is optim.iterations
        check_int("optim.warmup_epochs", self.warmup_epochs, minimum=0)
        check_int("optim.batch_size", self.batch_size, minimum=1)
        check_int("optim.grad_accum", self.grad_accum, minimum=1)
        self._check_length()
        if self.epochs is not None and self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ConfigError(
                f"optim.warmup_epochs ({self.warmup_epochs}) must be smaller than optim.epochs ({self.epochs})"
            )
        if self.max_grad_norm is not None:
            self.max_grad_norm = check_number("optim.max_grad_norm (or null)", self.max_grad_norm, above=0)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.adam_eps = check_number("optim.adam_eps", self.adam_eps, above=0)
        betas = self.adam_betas
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(is_number(b) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"optim.adam_betas must be two numbers in [0, 1), got {betas!r}")
        self.adam_betas = (float(betas[0]), float(betas[1]))

    def _check_length(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self.min_lr = check_number("optim.min_lr", self.min_lr, minimum=0)
        for name in ("iterations", "iterations_per_shot"):
            if getattr(self, name) is not None:
                check_int(f"optim.{name} (or null)", getattr(self, name), minimum=1)
        if self.iterations is not None and self.iterations_per_shot is not None:
            raise ConfigError("optim.iterations and optim.iterations_per_shot both set the run's length; set one "
                              "of them to null")
        if self.epochs is None and self.iterations is None and self.iterations_per_shot is None:
            raise ConfigError("optim.epochs is null, so optim.iterations or optim.iterations_per_shot must give the "
                              "run's length (a number of optimizer steps)")


@dataclass
class ClipSection:
    """Which CLIP weights to build the learner on."""

    weights: str = "ViT-B/16"
    """A registry name (``ViT-B/16``) or a path to a checkpoint file or folder."""
    activation: str | None = None
    """MLP activation for files that do not say it (``quick_gelu`` for OpenAI weights, ``gelu``)."""
    config: str | None = None
    """For bare weights without their config: the path of their ``config.json`` / ``open_clip_config.json``
    (``load(config=...)``, ``--clip-config``)."""
    architecture: str | None = None
    """For bare weights: a named architecture giving every field (``load(architecture=...)``, ``--clip-arch``)."""

    def __post_init__(self) -> None:
        if self.activation not in (None, "quick_gelu", "gelu"):
            raise ConfigError(f"clip.activation must be quick_gelu, gelu or null, got {self.activation!r}")
        for name in ("config", "architecture"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"clip.{name} must be a non-empty string or null, got {value!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError(f"clip.weights must name weights or a path, got {self.weights!r}")


@dataclass
class TeacherSection:
    """The frozen teacher of a method that distils from one (``needs_teacher``, e.g. PromptKD)."""

    path: str | None = None
    """An mmprompt run folder or prompt checkpoint (it records its method, CLIP and prompts), or an official
    teacher checkpoint (a Dassl ``model-best.pth.tar`` / ``model.pth.tar-N`` or its run folder). ``{dataset}``
    is replaced by the dataset key (one teacher per dataset in a sweep)."""
    clip: str = "ViT-L/14"
    """The teacher's CLIP for an official checkpoint (an mmprompt run records its own)."""
    activation: str | None = None
    """MLP activation of that CLIP file when it does not say it."""

    def __post_init__(self) -> None:
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ConfigError(f"teacher.path must be a path or null, got {self.path!r}")
        if not isinstance(self.clip, str) or not self.clip:
            raise ConfigError(f"teacher.clip must name CLIP weights or a path, got {self.clip!r}")
        if self.activation not in (None, "quick_gelu", "gelu"):
            raise ConfigError(f"teacher.activation must be quick_gelu, gelu or null, got {self.activation!r}")


@dataclass
class LogSection:
    """What a run writes besides its results."""

    every: int = 10
    """Write a training line to log.jsonl every this many optimizer steps (and at each epoch's end)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars under ``tb/``."""
    progress: bool = True
    """Show a tqdm progress bar (main process only)."""

    def __post_init__(self) -> None:
        check_int("log.every", self.every, minimum=1)


@dataclass
class RunConfig:
    """Everything a training (or evaluation) run needs; written resolved as ``config.yaml``."""

    method: MethodSection = field(default_factory=MethodSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    clip: ClipSection = field(default_factory=ClipSection)
    log: LogSection = field(default_factory=LogSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    """The frozen teacher of a distilling method (``--teacher``); unused by other methods."""
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    """How the text encoder runs class prompts (speed and memory only; every option is exact)."""
    precision: str = "fp32"
    """fp32, bf16 (autocast) or fp16 (autocast and a gradient scaler)."""
    eval_batch_size: int = 100
    """Test batch size."""
    output: str | None = None
    """Output folder of the run."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``..."""
    description: str = ""
    """Free text: what this preset reproduces."""
    dataset_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per dataset, dotted overrides applied when ``data.dataset`` is that dataset (e.g. CoOp on
    ImageNet: ``{imagenet: {optim.epochs: 50}}``)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        o = self.optim
        if o.epochs is None and o.iterations is None and o.iterations_per_shot is not None and self.data.shots < 1:
            raise ConfigError(f"optim.iterations_per_shot ({o.iterations_per_shot}) x data.shots gives the run's "
                              f"length, but data.shots is {self.data.shots} (every image); set optim.iterations=N")
        if not isinstance(self.dataset_overrides, dict):
            raise ConfigError("dataset_overrides must map dataset names to {dotted.key: value}")
        for name, values in self.dataset_overrides.items():
            if not isinstance(values, dict):
                raise ConfigError(f"dataset_overrides.{name} must map dotted keys to values")

    # ----------------------------------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (the YAML layout; method options flat beside ``name``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "method":
                out[f.name] = value.to_dict()
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Build and validate a config; unknown keys are an error naming the key."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a run config must be a mapping, got {type(d).__name__}")
        d = _move_legacy_encoder_fields(d)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            section = _SECTIONS.get(name)
            if section is None:
                check_fields(cls, {name: value})
                kwargs[name] = value
            elif section is MethodSection:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"'method' must be a mapping, got {excerpt(value)}")
                kwargs[name] = MethodSection.from_dict(value)
            else:
                kwargs[name] = _build_section(section, name, value)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> RunConfig:
        """A new config with dotted overrides applied (strings ``key=value`` or a mapping)."""
        return RunConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    def for_dataset(self, dataset: str) -> RunConfig:
        """This config with ``data.dataset`` set and that dataset's ``dataset_overrides`` applied.

        The result is resolved: its ``dataset_overrides`` is empty, so writing and reloading it (as a
        run's ``config.yaml``) gives the same values.
        """
        values = self.to_dict()
        values["data"]["dataset"] = dataset
        extra = _flatten(_lookup_dataset(self.dataset_overrides, dataset) or {})
        values["dataset_overrides"] = {}
        return RunConfig.from_dict(apply_overrides(values, extra))

    def method_config(self) -> Any:
        """The method's validated config object."""
        from .methods import make_config

        return make_config(self.method.name, self.method.options)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "method": MethodSection,
    "data": DataSection,
    "optim": OptimSection,
    "clip": ClipSection,
    "log": LogSection,
    "teacher": TeacherSection,
    "encoder": EncoderOptions,
}
_LEGACY_ENCODER_FIELDS = ("text_chunk_size", "text_chunk_tokens", "truncate_text", "share_text_prefix")


def _move_legacy_encoder_fields(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """Configs written before the encoder section kept its fields under ``method``: move them."""
    method = d.get("method")
    if not isinstance(method, Mapping) or not any(k in method for k in _LEGACY_ENCODER_FIELDS):
        return d
    out = dict(d)
    out["method"] = {k: v for k, v in method.items() if k not in _LEGACY_ENCODER_FIELDS}
    encoder = dict(out.get("encoder") or {})
    for k in _LEGACY_ENCODER_FIELDS:
        if k in method:
            encoder.setdefault(k, method[k])
    out["encoder"] = encoder
    return out


def _build_section(cls: type, name: str, value: Any) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name!r} must be a mapping, got {excerpt(value)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        keys = ", ".join(f"{name}.{str(k)[:40]}" for k in unknown)
        raise ConfigError(f"unknown config key(s) {keys}; known in {name!r}: {sorted(known)}")
    try:
        section = cls(**value)
    except ConfigError as exc:  # the section's own check: it names the field and its bounds
        raise ConfigError(f"{name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        _check_types(cls, value, name)  # a value of the wrong type: say so, not how a comparison failed
        raise ConfigError(f"{name}: {exc}") from None
    _check_types(cls, value, name)  # also the fields the section's own checks do not look at
    return section


def _check_types(cls: type, value: Mapping[str, Any], name: str) -> None:
    try:
        check_fields(cls, value, f"{name}.")
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _lookup_dataset(table: Mapping[str, Any], dataset: str) -> Any:
    key = name_key(dataset)
    return next((v for k, v in table.items() if name_key(k) == key), None)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------- overrides
def parse_value(text: str) -> Any:
    """A YAML scalar (``1e-3`` is a float, as most people expect, although YAML 1.1 says string)."""
    if YAML_FLOAT.match(text.strip()):
        return float(text)
    try:
        return load_yaml_text(text, "--set value") if text.strip() else ""
    except ConfigError as exc:
        if "given twice" in str(exc) or "expand to more" in str(exc):
            raise
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=0.001"`` -> ``("optim.lr", 0.001)``."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like dotted.key=value (e.g. optim.lr=0.001)")
    return key, parse_value(value)


_FREE_SECTIONS = ("method", "dataset_overrides")


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a nested config dict with dotted overrides applied.

    A key must name an existing field, except under ``method`` (method options are checked by the
    method's config) and ``dataset_overrides``. Unknown keys raise :class:`ConfigError` naming the key.
    """
    out = copy.deepcopy(dict(values))
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".")
        free = parts[0] in _FREE_SECTIONS and len(parts) > 1
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or (part not in node and not free):
                if ":" in parts[0]:
                    raise ConfigError(f"--set {key}=...: the form METHOD:key=value sets one method's runs of a "
                                      f"sweep (benchmark, reproduce); for one run write {key.partition(':')[2]}=...")
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])!r} does not exist")
            node = node.setdefault(part, {})
        last = parts[-1]
        if not isinstance(node, dict):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:-1])!r} is not a section")
        if last not in node and not free:
            raise ConfigError(f"unknown config key {key!r}; known here: {sorted(node)}")
        node[last] = value
    return out


# ----------------------------------------------------------------------------------------------- presets
def _presets_dir() -> Path:
    return Path(str(resources.files("mmprompt") / "configs"))


def list_presets() -> list[str]:
    """Names of the YAML presets: shipped with the package, and those of plugin methods (their table rows'
    preset files, named by the file's stem: ``clip_adapter_b2n``)."""
    from .methods.table import plugin_presets

    return sorted({p.stem for p in _presets_dir().glob("*.yaml")} | set(plugin_presets()))


def preset_path(name_or_path: str | Path) -> Path:
    """The YAML file of a preset name (``maple_b2n``) or an existing path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = _presets_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        from .methods.table import plugin_presets

        plugin = plugin_presets().get(str(name_or_path))
        if plugin is not None:
            return plugin
        raise ConfigError(f"unknown preset {str(name_or_path)!r}; known: {', '.join(list_presets())}")
    return candidate


def load_config(
    name_or_path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    dataset: str | None = None,
) -> RunConfig:
    """A validated :class:`RunConfig` from a preset name or YAML path (defaults when None).

    The preset's ``dataset_overrides`` for ``dataset`` (or for the ``data.dataset`` the config ends up
    with) are applied first and ``overrides`` last, so the command line always wins.
    """
    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = preset_path(name_or_path)
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a run config must be a mapping at the top level")
        values = loaded or {}
        try:
            base = RunConfig.from_dict(values).to_dict()  # the preset itself is valid
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    else:
        base = RunConfig().to_dict()
    items = dict(overrides.items()) if isinstance(overrides, Mapping) else dict(map(parse_override, overrides))
    table = {k: v for k, v in items.items() if k.startswith("dataset_overrides.")}
    rest = {k: v for k, v in items.items() if k not in table}
    base = apply_overrides(base, table)
    dataset = dataset or rest.get("data.dataset") or base["data"]["dataset"]
    if dataset is not None:  # the dataset's own overrides first, so that the command line wins
        base["data"]["dataset"] = dataset
        extra = _flatten(_lookup_dataset(base["dataset_overrides"], str(dataset)) or {})
        base["dataset_overrides"] = {}
        base = apply_overrides(base, extra)
    return RunConfig.from_dict(apply_overrides(base, rest))
