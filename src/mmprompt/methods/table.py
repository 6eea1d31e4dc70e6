"""The method table: one row per method, owning everything mmprompt knows about it.

A row (:class:`MethodSpec`) names the learner and its config class, the default preset per protocol,
the official (Dassl) parameter names, config keys and checkpoint folders. Nothing outside the table
lists methods: the CLI's choices, ``import-official``, the protocols' default presets, the parity check
and the tests all read it.

Methods defined outside mmprompt join the table through the entry-point group ``mmprompt.methods``
(each entry point loads a :class:`MethodSpec`, or a callable returning one) or through an explicit
:func:`register` call.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..checks import ConfigError, check_fields
from ..names import name_key
from .base import MethodConfig, PromptLearner

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mmprompt.methods"
PROTOCOLS: tuple[str, ...] = ("base2novel", "transfer", "few-shot")
"""Protocols a method can name a default preset for (``transfer``: cross-dataset and domain
generalisation, trained on ImageNet)."""

OfficialConfig = Mapping[str, str] | Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class MethodSpec:
    """Everything mmprompt knows about one method."""

    name: str
    """The canonical key (``maple``)."""
    learner: type[PromptLearner]
    config: type[MethodConfig]
    presets: Mapping[str, str | Path] = field(default_factory=dict)
    """Protocol -> preset name (``mmprompt/configs/<name>.yaml``) or path to a preset YAML. A protocol
    without an entry uses the ``base2novel`` preset."""
    official_names: Mapping[str, str | Callable[[re.Match[str]], str]] = field(default_factory=dict)
    """Regex over the official (Dassl) parameter name -> our name (template or function)."""
    official_config: OfficialConfig = field(default_factory=dict)
    """Official yaml key -> our config field, or a function (official config, the reference case's whole
    description) -> our config values."""
    official_ignored: tuple[str, ...] = ("PREC",)
    """Official keys that do not change our computation (precision is a run option)."""
    official_folders: tuple[str, ...] = ()
    """Dassl model names the official checkpoints are saved under (``<dir>/<name>/model.pth.tar-N``)."""
    official_reader: Callable[[Path, Any], tuple[dict[str, Any], dict[str, Any]]] | None = None
    """For official code bases that are not Dassl: (an official checkpoint file or a folder holding it, the
    CLIP architecture's :class:`~mmprompt.clip.config.CLIPConfig`) -> (our trainable tensors by name, the
    config values the file fixes); used by ``import-official``."""
    aliases: tuple[str, ...] = ()
    alias_presets: Mapping[str, Mapping[str, str | Path]] = field(default_factory=dict)
    """Alias -> its own presets per protocol (``dept_coop`` -> DePT's CoOp presets), used when a user names
    the method by that alias."""
    description: str = ""
    demo_overrides: tuple[str, ...] = ()
    """Overrides of the preset for the 4-layer demo CLIP (``method.depth=3``: depths scaled from 12 layers)."""
    quick_overrides: tuple[str, ...] = ()
    """Further overrides for ``mmprompt demo --quick`` (fewer epochs for long recipes)."""
    reference_options: Mapping[str, Any] = field(default_factory=dict)
    """Method options that ``mmprompt speed``'s reference path sets: the official computation where the method
    has a cheaper exact one of its own (CLIP-LoRA: the update as a full d x d product)."""

    def preset_for(self, protocol: str, alias: str | None = None) -> str | Path:
        """The default preset of this method (as named by ``alias``, if given) for ``protocol``."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        own = next((v for k, v in self.alias_presets.items() if alias and name_key(k) == name_key(alias)), None)
        presets = own or self.presets
        preset = presets.get(protocol) or presets.get("base2novel")
        if preset is None:
            raise ValueError(f"method {self.name!r} names no preset for {protocol} (MethodSpec.presets)")
        return preset


_REGISTERED: dict[str, MethodSpec] = {}
_PLUGINS: dict[str, MethodSpec] | None = None


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the table (a plugin's explicit alternative to the entry point)."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register() needs a MethodSpec, got {type(spec).__name__}")
    clash = _lookup().get(name_key(spec.name))
    if clash is not None and clash is not spec:
        raise ValueError(f"a method named {spec.name!r} is already registered ({clash.learner.__module__})")
    _REGISTERED[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method added with :func:`register` (tests)."""
    _REGISTERED.pop(name, None)


def _load_plugins() -> dict[str, MethodSpec]:
    """Methods of installed distributions (entry-point group ``mmprompt.methods``), loaded once."""
    global _PLUGINS
    if _PLUGINS is None:
        found: dict[str, MethodSpec] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                spec = obj() if callable(obj) and not isinstance(obj, MethodSpec) else obj
            except (Exception, SystemExit) as exc:  # a broken plugin must not break (or end) mmprompt
                what = f"it called sys.exit({exc.code!r}) on import" if isinstance(exc, SystemExit) else (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
                logger.warning("method plugin %s (%s) could not be loaded and is left out: %s", ep.name, ep.value,
                               what[:300])
                continue
            if not isinstance(spec, MethodSpec):
                logger.warning("method plugin %s (%s) is not a MethodSpec", ep.name, ep.value)
                continue
            found[spec.name] = spec
        _PLUGINS = found
    return _PLUGINS


def reload_plugins() -> None:
    """Forget the loaded entry points (after installing a plugin into a running process)."""
    global _PLUGINS
    _PLUGINS = None


def all_methods() -> dict[str, MethodSpec]:
    """Every method: built-in, from entry points, and registered."""
    from .builtin import BUILTIN

    table = dict(BUILTIN)
    for spec in (*_load_plugins().values(), *_REGISTERED.values()):
        if spec.name in table and table[spec.name] is not spec:
            logger.warning("method %r of %s is shadowed by the built-in one", spec.name, spec.learner.__module__)
            continue
        table[spec.name] = spec
    return table


def plugin_presets() -> dict[str, Path]:
    """Preset name -> YAML file, for the preset files that methods outside the package name in their rows
    (``mmprompt train --list-presets`` lists them, ``--config NAME`` takes them)."""
    from .builtin import BUILTIN

    out: dict[str, Path] = {}
    for name, spec in all_methods().items():
        if name in BUILTIN:
            continue
        values = [*spec.presets.values(), *(v for p in spec.alias_presets.values() for v in p.values())]
        for value in values:
            path = Path(value)
            if path.suffix in (".yaml", ".yml") and path.is_file():
                out.setdefault(path.stem, path)
    return out


def _lookup() -> dict[str, MethodSpec]:
    out: dict[str, MethodSpec] = {}
    for spec in all_methods().values():
        for key in (spec.name, *spec.aliases):
            out.setdefault(name_key(key), spec)
    return out


def list_methods() -> list[str]:
    """Canonical names of every method in the table."""
    return list(all_methods())


def get_method(name: str) -> MethodSpec:
    spec = _lookup().get(name_key(name))
    if spec is None:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(all_methods())}")
    return spec


def canonical_method(name: str) -> str:
    return get_method(name).name


def method_variant(name: str) -> str:
    """The name a sweep runs and reports ``name`` under: an alias with presets of its own (``dept_coop``,
    ``dept_maple``) is a variant of its method and keeps its name, so that two variants in one sweep get their
    own presets, run folders and rows; any other name becomes the method's key."""
    spec = get_method(name)
    return next((alias for alias in spec.alias_presets if name_key(alias) == name_key(name)), spec.name)


def make_config(method: str, values: Mapping[str, Any] | None = None) -> MethodConfig:
    """A validated config for ``method`` from a mapping of field values (unknown fields are an error)."""
    cls = get_method(method).config
    values = {k: v for k, v in dict(values or {}).items() if k not in LEGACY_ENCODER_FIELDS}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) for method {method!r}: {unknown}; known: {sorted(known)}")
    try:
        config = cls(**values)
    except ConfigError:  # the class's own check: it names the field and its bounds
        raise
    except (TypeError, ValueError):
        check_fields(cls, values, f"{method}.")  # a value of the wrong type: say so, not how a comparison failed
        raise
    check_fields(cls, values, f"{method}.")  # also the fields the class's own checks do not look at
    return config


LEGACY_ENCODER_FIELDS = ("text_chunk_size", "text_chunk_tokens", "truncate_text", "share_text_prefix")
"""Fields that earlier versions kept in every method config; now encoder options (ignored here)."""


def config_from_official(
    method: str, official: Mapping[str, Any], case: Mapping[str, Any] | None = None
) -> MethodConfig:
    """Our config for an official config (flat ``TRAINER.<NAME>`` keys, or whatever the method's
    ``official_config`` function reads from it and from the reference ``case``); unknown keys are an
    error."""
    spec = get_method(method)
    if callable(spec.official_config):
        return make_config(method, spec.official_config(official, case or {}))
    values: dict[str, Any] = {}
    for key, value in official.items():
        if key in spec.official_ignored:
            continue
        if key not in spec.official_config:
            raise ValueError(
                f"official option {key!r} is not understood for method {method!r}; "
                f"known: {sorted(spec.official_config)}"
            )
        values[spec.official_config[key]] = value
    return make_config(method, values)


def official_to_ours(method: str, official_name: str) -> str | None:
    """Our parameter name for an official trainable parameter name (None if it is not trained)."""
    for pattern, target in get_method(method).official_names.items():
        m = re.fullmatch(pattern, official_name)
        if m:
            return target(m) if callable(target) else m.expand(target)
    return None
