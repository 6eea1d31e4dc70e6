"""Fit a run config to the loaded CLIP: prompt depths of the paper's presets on a CLIP with fewer layers.

The presets are written for ViT-B/16 (12 layers per tower). On a smaller CLIP (the demo CLIP has 4),
a preset depth beyond the model's layers is scaled in proportion (MaPLe's 9 of 12 -> 3 of 4) with a log
line; a depth the user set explicitly is not changed, the run is refused with the exact ``--set`` to use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from ..clip.model import CLIP
from ..config import ConfigError, RunConfig, parse_override

__all__ = ["PRESET_LAYERS", "depth_limits", "fit_depths_to_clip", "refuse_explicit_depths"]

logger = logging.getLogger(__name__)

PRESET_LAYERS = 12
"""Layers per tower of the CLIP the presets are written for (ViT-B/16)."""


def depth_limits(cfg: RunConfig, clip: CLIP) -> dict[str, tuple[int, int]]:
    """``{option: (value, layers)}`` for each prompt-depth option of ``cfg``'s method that exceeds ``clip``."""
    method_cfg = cfg.method_config()
    text, vision = clip.config.text.layers, clip.config.vision.layers
    layers_of = {"depth": min(text, vision), "depth_text": text, "depth_vision": vision}
    out = {}
    for f in dataclasses.fields(method_cfg):
        if f.name in layers_of:
            value = getattr(method_cfg, f.name)
            if isinstance(value, int) and value > layers_of[f.name]:
                out[f.name] = (value, layers_of[f.name])
    return out


def _scaled(value: int, layers: int) -> int:
    return max(1, min(layers, round(value * layers / max(layers, PRESET_LAYERS))))


def refuse_explicit_depths(cfg: RunConfig, clip: CLIP, overrides: Iterable[str]) -> None:
    """Raise :class:`ConfigError` when a depth given in ``overrides`` (``--set``) exceeds ``clip``'s layers."""
    given = {parse_override(o)[0] for o in overrides}
    for name, (value, layers) in depth_limits(cfg, clip).items():
        if f"method.{name}" in given:
            raise ConfigError(
                f"method.{name}={value} is deeper than this CLIP's {layers} layers; use "
                f"--set method.{name}={_scaled(value, layers)} (at most {layers})"
            )


def fit_depths_to_clip(cfg: RunConfig, clip: CLIP) -> RunConfig:
    """``cfg`` with every prompt depth beyond ``clip``'s layers scaled to it (logged); unchanged otherwise."""
    limits = depth_limits(cfg, clip)
    if not limits:
        return cfg
    changes = {f"method.{name}": _scaled(value, layers) for name, (value, layers) in limits.items()}
    for name, (value, layers) in limits.items():
        logger.warning(
            "%s: method.%s=%d is written for a %d-layer CLIP; this CLIP has %d layers, so using method.%s=%d "
            "(choose another with --set method.%s=N)", cfg.method.name, name, value, PRESET_LAYERS, layers,
            name, changes[f"method.{name}"], name,
        )
    return cfg.with_overrides(changes)
