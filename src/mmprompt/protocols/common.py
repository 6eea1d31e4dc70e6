"""What every protocol shares: per-run configs, run folders, a lazily loaded CLIP, and the sweep loop.

A sweep's output folder holds one run folder per (method, dataset, setting, seed),
``<output>/<method>/<dataset>/<setting>/seed<k>/``, plus the aggregated ``results.*`` files. Finished
runs (``metrics.json`` written last) are skipped, so a sweep can be stopped and started again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clip.model import CLIP
from ..config import RunConfig, load_config
from ..engine.clip_source import ClipSpec, resolve_clip
from ..engine.distributed import DistContext, resolve_device

__all__ = [
    "ClipProvider",
    "SweepOptions",
    "dataset_label",
    "run_config",
]

logger = logging.getLogger(__name__)

def default_preset(method: str, protocol: str) -> str | Path:
    """The method table's default preset of ``method`` for ``protocol`` (base2novel, transfer, few-shot)."""
    from ..methods import get_method

    return get_method(method).preset_for(protocol, alias=method)


@dataclass
class SweepOptions:
    """Inputs common to every protocol."""

    methods: Sequence[str]
    datasets: Sequence[str]
    seeds: Sequence[int]
    data_root: str | Path
    clip_spec: ClipSpec
    output: str | Path
    presets: Mapping[str, str | Path | RunConfig] = field(default_factory=dict)
    """Method -> preset name, YAML path or config (default: the protocol's preset for the method)."""
    overrides: Sequence[str] | Mapping[str, Any] = ()
    """Dotted overrides for every run (``optim.epochs=2``). ``METHOD:key=value`` applies to one method
    only; a ``method.<option>`` override applies to the methods that have that option (an option no
    method of the sweep has is an error)."""
    shots: int = 16
    clip_activation: str | None = None
    device: str = "auto"
    progress: bool = True
    ctx: DistContext | None = None

    def __post_init__(self) -> None:
        from ..methods import method_variant

        if not self.methods:
            raise ValueError("no methods given")
        if not self.seeds:
            raise ValueError("no seeds given")
        self.methods = [method_variant(m) for m in self.methods]
        self.datasets = [canonical_dataset(d) for d in self.datasets]
        self.presets = {method_variant(k): v for k, v in dict(self.presets).items()}
        self.output = Path(self.output)
        if self.ctx is None:
            self.ctx = DistContext(device=resolve_device(self.device))
        self._per_method = _split_overrides(self.methods, self.overrides)

    def overrides_for(self, method: str) -> dict[str, Any]:
        """The overrides that apply to ``method``."""
        return self._per_method[method]


def _split_overrides(methods: Sequence[str], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, dict]:
    import dataclasses

    from ..config import ConfigError, parse_override
    from ..methods import canonical_method, get_method, method_variant

    items = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in items:
        target, sep, dotted = key.partition(":")
        if sep:
            variant = method_variant(target)
            # a variant (dept_coop) only, or every variant of a method named by its key (dept)
            chosen = [m for m in methods if m == variant
                      or (variant == canonical_method(target) and canonical_method(m) == variant)]
            if not chosen:
                raise ConfigError(f"override {key!r} names the method {target!r}, which is not in this sweep")
            for m in chosen:
                out[m][dotted] = value
            continue
        if key == "data.descriptions":  # class descriptions go to the methods that read them
            for m in methods:
                if get_method(m).learner.uses_descriptions:
                    out[m][key] = value
            continue
        parts = key.split(".")
        if parts[0] == "method" and len(parts) == 2 and parts[1] != "name":
            takers = [m for m in methods if parts[1] in {f.name for f in dataclasses.fields(get_method(m).config)}]
            if not takers:
                raise ConfigError(f"unknown config key {key!r}: no method of this sweep ({', '.join(methods)}) "
                                  f"has the option {parts[1]!r}")
            for m in takers:
                out[m][key] = value
            continue
        for m in methods:
            out[m][key] = value
    return out


def run_config(
    opts: SweepOptions, method: str, protocol: str, dataset: str, seed: int, subsample: str
) -> RunConfig:
    """The resolved config of one run: preset, the dataset's own overrides, the sweep's overrides, then
    the protocol's fixed fields (dataset, root, shots, seed, subsample)."""
    from ..methods import canonical_method

    preset = opts.presets.get(method) or opts.presets.get(canonical_method(method)) or default_preset(method, protocol)
    overrides = opts.overrides_for(method)
    if isinstance(preset, RunConfig):
        cfg = preset.for_dataset(dataset).with_overrides(overrides)
    else:
        cfg = load_config(preset, overrides, dataset=dataset)
    if cfg.method.name != canonical_method(method):
        raise ValueError(f"the config for {method!r} is a {cfg.method.name!r} config ({preset})")
    fixed = {
        "data.dataset": dataset, "data.root": str(opts.data_root), "data.shots": opts.shots,
        "data.seed": int(seed), "data.subsample": subsample, "device": opts.device,
        "log.progress": bool(opts.progress),
    }
    if isinstance(opts.clip_spec, (str, Path)):
        fixed["clip.weights"] = str(opts.clip_spec)
        fixed["clip.activation"] = opts.clip_activation
    cfg = cfg.with_overrides(fixed)
    from ..methods import get_method

    if get_method(cfg.method.name).learner.needs_teacher and not cfg.teacher.path:
        from ..config import ConfigError

        raise ConfigError(f"{method} distils from a frozen teacher: pass --set {method}:teacher.path=DIR (an mmprompt "
                          "run or official teacher checkpoint; {dataset} in DIR is replaced by each dataset's key)")
    return cfg


def run_folder(output: Path, method: str, dataset: str, setting: str, seed: int) -> Path:
    return output / method / dataset / setting / f"seed{seed}"


class ClipProvider:
    """Loads the CLIP the first time it is needed (a finished sweep never loads it) and keeps it."""

    def __init__(self, spec: ClipSpec, activation: str | None, ctx: DistContext) -> None:
        self.spec, self.activation, self.ctx = spec, activation, ctx
        self._clip: tuple[CLIP, dict[str, Any]] | None = None

    def get(self) -> tuple[CLIP, dict[str, Any]]:
        if self._clip is None:
            self._clip = resolve_clip(self.spec, self.activation, self.ctx.device)
        return self._clip


def dataset_label(key: str) -> str:
    """The dataset's name as printed in the paper's tables ("DTD", "Flowers102"), else the key."""
    try:
        from ..data import get_dataset_info

        return get_dataset_info(key).label
    except (KeyError, ImportError):
        return key


def canonical_dataset(name: str) -> str:
    """The data module's key for a dataset name (``OxfordPets`` -> ``oxford_pets``)."""
    try:
        from ..data import resolve_name

        return resolve_name(name)
    except KeyError:
        if name.lower().startswith("custom"):
            return name
        raise
