"""Assemble a loaded checkpoint's :class:`CLIPConfig` from what is known, and say where each field came from.

Three kinds of knowledge, in increasing priority:

1. the tensors' shapes (widths, depths, patch size, resolution, vocabulary, which optional tensors exist);
2. what the checkpoint states: its Hugging Face ``config.json`` or ``open_clip_config.json``
   (:mod:`mmprompt.clip.hf`, :mod:`mmprompt.clip.openclip`) or the registry entry its SHA-256 matches;
3. explicit arguments of :func:`mmprompt.clip.load` (``architecture=`` states every field of a named
   architecture; ``heads=``, ``activation=``, ``eps=``, ``text_pool=``, ... one field each).

A field that changes the computation and is known from none of these is an error naming the argument to
pass; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from .config import CLIPConfig, Preprocess, TextConfig, VisionConfig, get_config

__all__ = ["FIELD_ARGUMENTS", "MissingFieldError", "Stated", "UnsupportedCheckpointError", "architecture_fields",
           "argument_fields", "assemble", "square_size"]

logger = logging.getLogger(__name__)

Stated = dict[str, tuple[Any, str]]
"""``{"vision.heads": (16, "open_clip_config.json vision_cfg.width / head_width"), ...}``: value and source."""


class UnsupportedCheckpointError(ValueError):
    """The checkpoint states a feature this CLIP does not implement (named in the message)."""


class MissingFieldError(ValueError):
    """A field that changes the computation is stated nowhere; the message names the ``load()`` argument."""


def square_size(value: Any, what: str, source: str) -> int:
    """An image or patch size stated as one int or ``[h, w]``; non-square sizes are refused by name."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedCheckpointError(f"{source}: {what} = {list(value)} is not square; non-square image "
                                             "sizes and patches are not supported")
        value = value[0]
    return int(value)


FIELD_ARGUMENTS: dict[str, str] = {
    "vision.heads": "heads=(vision_heads, text_heads)",
    "text.heads": "heads=(vision_heads, text_heads)",
    "vision.activation": "activation='quick_gelu' | 'gelu' | 'gelu_tanh'",
    "text.activation": "activation='quick_gelu' | 'gelu' | 'gelu_tanh'",
    "vision.ln_eps": "eps=1e-5 (or eps=(vision_eps, text_eps))",
    "text.ln_eps": "eps=1e-5 (or eps=(vision_eps, text_eps))",
    "vision.pool": "vision_pool='tok' | 'avg'",
    "vision.final_ln_after_pool": "final_ln_after_pool=True | False",
    "text.causal": "text_causal=True | False",
    "text.pool": "text_pool='argmax' | 'eos' | 'last' | 'first'",
    "text.eos_id": "eos_id=<token id>",
}
"""Every field that changes the computation but is not in the tensors' shapes, with its ``load()`` argument."""

# The OpenAI architectures state their activation (quick_gelu); the open_clip ViT-H/g/bigG shapes are
# released with either activation, so naming them does not state it.
_NAMES_WITHOUT_ACTIVATION = ("ViT-H/14", "ViT-g/14", "ViT-bigG/14")


def _pair(value: Any, what: str) -> tuple[Any, Any]:
    if isinstance(value, Mapping):
        return value["vision"], value["text"]
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what} must be one value or (vision, text), got {value!r}")
        return value[0], value[1]
    return value, value


def argument_fields(args: Mapping[str, Any]) -> Stated:
    """The fields explicit ``load()`` arguments state (``None`` arguments state nothing)."""
    out: Stated = {}
    given = {k: v for k, v in args.items() if v is not None}
    if "heads" in given:
        v, t = _pair(given["heads"], "heads")
        out["vision.heads"] = (int(v), f"load(heads={given['heads']!r})")
        out["text.heads"] = (int(t), f"load(heads={given['heads']!r})")
    if "activation" in given:
        v, t = _pair(given["activation"], "activation")
        out["vision.activation"] = (v, f"load(activation={given['activation']!r})")
        out["text.activation"] = (t, f"load(activation={given['activation']!r})")
    if "eps" in given:
        v, t = _pair(given["eps"], "eps")
        out["vision.ln_eps"] = (float(v), f"load(eps={given['eps']!r})")
        out["text.ln_eps"] = (float(t), f"load(eps={given['eps']!r})")
    for arg, field in (("vision_pool", "vision.pool"), ("final_ln_after_pool", "vision.final_ln_after_pool"),
                       ("text_causal", "text.causal"), ("text_pool", "text.pool"), ("eos_id", "text.eos_id")):
        if arg in given:
            out[field] = (given[arg], f"load({arg}={given[arg]!r})")
    return out


def architecture_fields(name: str) -> Stated:
    """Every non-shape field of a named architecture (:func:`mmprompt.clip.config.get_config`)."""
    cfg = get_config(name)
    where = f"load(architecture={name!r})"
    out: Stated = {
        "vision.heads": (cfg.vision.heads, where),
        "text.heads": (cfg.text.heads, where),
        "vision.ln_eps": (cfg.vision.ln_eps, where),
        "text.ln_eps": (cfg.text.ln_eps, where),
        "vision.pool": (cfg.vision.pool, where),
        "vision.final_ln_after_pool": (cfg.vision.final_ln_after_pool, where),
        "text.causal": (cfg.text.causal, where),
        "text.pool": (cfg.text.pool, where),
        "text.eos_id": (cfg.text.eos_id, where),
        "text.start_token": (cfg.text.start_token, where),
    }
    if not any(name.replace("-", "/").lower() == n.lower() for n in _NAMES_WITHOUT_ACTIVATION):
        out["vision.activation"] = (cfg.vision_activation, where)
        out["text.activation"] = (cfg.text_activation, where)
    return out


def _check_widths(name: str, shapes: Mapping[str, Any]) -> None:
    cfg = get_config(name)
    found = (shapes["vision"]["width"], shapes["text"]["width"])
    if found != (cfg.vision.width, cfg.text.width):
        raise ValueError(
            f"architecture={name!r} has vision/text widths {(cfg.vision.width, cfg.text.width)}, but the "
            f"weights have {found}: name the architecture the weights are"
        )


def _merge(layers: list[Stated], source: str) -> Stated:
    """Later layers win; a value replaced by a different one is logged."""
    out: Stated = {}
    for layer in layers:
        for key, (value, where) in layer.items():
            if key in out and out[key][0] != value:
                logger.warning("%s: %s = %r (%s) replaces %r (%s)", source, key, value, where, *out[key])
            out[key] = (value, where)
    return out


def assemble(
    shapes: Mapping[str, Any],
    stated: Stated,
    args: Mapping[str, Any],
    source: str,
    architecture: str | None = None,
    preprocess: Preprocess | None = None,
    family: str = "clip",
) -> tuple[CLIPConfig, dict[str, str]]:
    """The config of a checkpoint and the source of each field (``{"vision.heads": "config.json ..."}``).

    ``shapes``: :func:`mmprompt.clip.config.shapes_from_state_dict`; ``stated``: what the checkpoint's own
    files say; ``args``: explicit ``load()`` arguments; ``architecture``: a named architecture given to
    ``load()``. Raises :class:`MissingFieldError` listing every field known from none of these.
    """
    layers = [stated]
    if architecture is not None:
        _check_widths(architecture, shapes)
        layers.append(architecture_fields(architecture))
    layers.append(argument_fields(args))
    fields = _merge(layers, source)
    values = {k: v for k, (v, _) in fields.items()}

    needed = ["vision.heads", "text.heads", "vision.activation", "text.activation", "vision.ln_eps",
              "text.ln_eps", "text.causal", "text.pool"]
    if shapes["vision"]["pool"] != "map":
        needed.append("vision.pool")
    if values.get("vision.pool") == "avg":
        needed.append("vision.final_ln_after_pool")
    if values.get("text.pool") == "eos":
        needed.append("text.eos_id")
    missing = [k for k in needed if values.get(k) is None]
    if missing:
        wanted = sorted({FIELD_ARGUMENTS[k] for k in missing})
        why = ("its config leaves it null or unset" if stated else
               "it has no config.json or open_clip_config.json beside it and is not a registered release")
        raise MissingFieldError(
            f"{source}: {', '.join(missing)} cannot be read from this checkpoint ({why}). Pass "
            + "; ".join(wanted)
            + " to load(), or architecture='<name>' (e.g. 'ViT-B/16', 'ViT-H/14') for every field of a "
            "named architecture, or config=<path of its config.json / open_clip_config.json>. On the command "
            "line, put the release's open_clip_config.json (or Hugging Face config.json) beside the weights file."
        )
    v_shape, t_shape = dict(shapes["vision"]), dict(shapes["text"])
    if v_shape["pool"] != "map":
        v_shape["pool"] = values["vision.pool"]
    elif values.get("vision.pool") not in (None, "map"):
        raise UnsupportedCheckpointError(f"{source}: the weights have an attention-pooling head, but "
                                         f"vision.pool = {values['vision.pool']!r} is stated")
    vision = VisionConfig(
        heads=values["vision.heads"],
        activation=values["vision.activation"],
        ln_eps=values["vision.ln_eps"],
        final_ln_after_pool=bool(values.get("vision.final_ln_after_pool", False)),
        **v_shape,
    )
    text = TextConfig(
        heads=values["text.heads"],
        activation=values["text.activation"],
        ln_eps=values["text.ln_eps"],
        causal=bool(values["text.causal"]),
        pool=values["text.pool"],
        eos_id=values.get("text.eos_id") if values["text.pool"] == "eos" else None,
        start_token=bool(values.get("text.start_token", True)),
        **t_shape,
    )
    activation = text.activation  # the model's; a vision tower that differs keeps its own
    config = CLIPConfig(
        embed_dim=shapes["embed_dim"],
        vision=dataclasses.replace(vision, activation=None) if vision.activation == activation else vision,
        text=dataclasses.replace(text, activation=None) if text.activation == activation else text,
        activation=activation,
        logit_bias=shapes["logit_bias"],
        family=family,
        preprocess=preprocess,
        mean=preprocess.mean if preprocess else Preprocess().mean,
        std=preprocess.std if preprocess else Preprocess().std,
    )
    sources = {k: where for k, (_, where) in fields.items()}
    return config, sources
