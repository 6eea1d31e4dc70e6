"""Run configuration: typed dataclasses, YAML presets and dotted command-line overrides.

A run is described by a :class:`RunConfig` with one section per concern (``method``, ``data``, ``optim``,
``clip``, ``log``; their classes are in :mod:`mmprompt.config_sections`) plus a few top-level fields.
Presets for the paper's settings live as YAML files in ``mmprompt/configs/`` and are loaded by name
(``maple_b2n``) or by path::

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

from .checks import ConfigError, check_fields, check_int, excerpt
from .config_sections import (
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SUBSAMPLES,
    ClipSection,
    DataSection,
    LogSection,
    MethodSection,
    OptimSection,
    TeacherSection,
)
from .methods.contract import EncoderOptions
from .names import name_key
from .yamlio import YAML_FLOAT, load_yaml_text, read_yaml

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "SUBSAMPLES",
    "ClipSection",
    "ConfigError",
    "DataSection",
    "LogSection",
    "MethodSection",
    "OptimSection",
    "RunConfig",
    "TeacherSection",
    "apply_overrides",
    "list_presets",
    "load_config",
    "parse_override",
    "preset_path",
    "read_yaml",
]


# ----------------------------------------------------------------------------------------------- the run
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
