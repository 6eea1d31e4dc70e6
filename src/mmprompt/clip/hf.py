"""What a Hugging Face folder states: ``config.json`` (CLIP, MetaCLIP 2, SigLIP / fixed-resolution SigLIP 2)
and ``preprocessor_config.json``, read with transformers' semantics.

A key missing from ``config.json`` means transformers' default for that model type (the defaults are
copied here as facts and checked against transformers by the tests). ``text_config_dict`` /
``vision_config_dict`` are merged as transformers merges them: the ``*_dict`` completed with the defaults
overrides ``*_config``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .config import OPENAI_MEAN, OPENAI_STD, Preprocess
from .describe import Stated, UnsupportedCheckpointError, square_size

__all__ = ["HF_DEFAULTS", "hf_preprocess", "hf_tower", "read_hf_config", "refuse_unsupported_type"]

logger = logging.getLogger(__name__)

_CLIP_TEXT = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
              "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
              "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407}
_CLIP_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5}
HF_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "clip": {"text": _CLIP_TEXT, "vision": _CLIP_VISION},
    "metaclip_2": {"text": _CLIP_TEXT, "vision": _CLIP_VISION},
    "siglip": {
        "text": {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
                 "layer_norm_eps": 1e-6, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407},
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
                   "layer_norm_eps": 1e-6, "vision_use_head": True},
    },
}
"""transformers' config defaults per ``model_type`` and tower (transformers 4.x and 5.x agree)."""

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_ARCHITECTURE_TYPES = {"CLIPModel": "clip", "MetaClip2Model": "metaclip_2", "SiglipModel": "siglip"}
_REFUSED_TYPES = {
    "siglip2": "Siglip2Model, NaFlex variable resolution; the fixed-resolution SigLIP 2 releases are SiglipModel "
               "folders (model_type 'siglip') and load",
    "altclip": "AltCLIP: an XLM-RoBERTa text tower, not CLIP's",
    "chinese_clip": "ChineseCLIP: a BERT text tower, not CLIP's",
    "clip_vision_model": "a vision-only model (CLIPVisionModel): prompt learning needs the text tower too",
    "clip_text_model": "a text-only model (CLIPTextModel): prompt learning needs the image tower too",
    "siglip_vision_model": "a vision-only model (SiglipVisionModel): prompt learning needs the text tower too",
    "siglip_text_model": "a text-only model (SiglipTextModel): prompt learning needs the image tower too",
    "clipseg": "CLIPSeg: a segmentation model",
    "x_clip": "X-CLIP: a video model",
    "owlvit": "OWL-ViT: a detection model",
    "owlv2": "OWLv2: a detection model",
    "blip": "BLIP: not a CLIP two-tower model",
}
"""Hugging Face model types refused by name (before their tensors are read)."""


def refuse_unsupported_type(config: Mapping[str, Any] | None, name: str) -> None:
    """Refuse a ``config.json`` whose ``model_type`` (or ``architectures``) names a model mmprompt does not
    load, saying which it is; a config without either says nothing (another library's config)."""
    if not config:
        return
    model_type = config.get("model_type")
    archs = list(config.get("architectures") or [])
    if model_type is None and not archs:
        return
    if model_type in _REFUSED_TYPES:
        raise UnsupportedCheckpointError(f"{name}: model_type {model_type!r} is not supported "
                                         f"({_REFUSED_TYPES[model_type]}); supported: {', '.join(HF_DEFAULTS)}")
    if model_type is not None and model_type not in HF_DEFAULTS:
        what = f" ({archs[0]})" if archs else ""
        raise UnsupportedCheckpointError(f"{name}: model_type {model_type!r}{what} is not supported (supported: "
                                         f"{', '.join(HF_DEFAULTS)}: CLIPModel, MetaClip2Model, SiglipModel)")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _model_type(config: Mapping[str, Any], name: str) -> str:
    model_type = config.get("model_type")
    if model_type is None:
        archs = [a for a in config.get("architectures") or [] if a in _ARCHITECTURE_TYPES]
        if not archs:
            raise UnsupportedCheckpointError(f"{name}: no model_type and no known architectures entry")
        model_type = _ARCHITECTURE_TYPES[archs[0]]
    refuse_unsupported_type({**config, "model_type": model_type}, name)
    if model_type not in HF_DEFAULTS:
        raise UnsupportedCheckpointError(
            f"{name}: model_type {model_type!r} is not supported (supported: {', '.join(HF_DEFAULTS)})"
        )
    return model_type


def hf_tower(config: Mapping[str, Any], tower: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """One tower's settings as transformers reads them: defaults, ``<tower>_config``, then
    ``<tower>_config_dict`` completed with the defaults (which overrides ``<tower>_config``)."""
    merged = {**defaults, **(config.get(f"{tower}_config") or {})}
    as_dict = config.get(f"{tower}_config_dict")
    if as_dict is not None:
        merged.update({**defaults, **as_dict})
    return merged


def read_hf_config(config: Mapping[str, Any], name: str = "config.json") -> tuple[Stated, str, dict[str, Any]]:
    """The fields ``config.json`` states (with their sources), the family, and checks for the shapes.

    Returns ``(stated, family, expected)`` where ``expected`` holds sizes the weights must have
    (``vision.image_size``, ``vision.patch_size``).
    """
    model_type = _model_type(config, name)
    towers = {t: hf_tower(config, t, HF_DEFAULTS[model_type][t]) for t in ("text", "vision")}
    stated: Stated = {}

    def where(tower: str, key: str) -> str:
        given = key in (config.get(f"{tower}_config_dict") or config.get(f"{tower}_config") or {})
        return f"{name} {tower}_config.{key}" + ("" if given else f" (transformers' {model_type} default)")

    for tower, cfg in towers.items():
        act = cfg["hidden_act"]
        if act not in _ACTIVATIONS:
            raise UnsupportedCheckpointError(
                f"{name}: {tower}_config.hidden_act = {act!r} is not supported (supported: {', '.join(_ACTIVATIONS)})"
            )
        stated[f"{tower}.activation"] = (_ACTIVATIONS[act], where(tower, "hidden_act"))
        stated[f"{tower}.heads"] = (int(cfg["num_attention_heads"]), where(tower, "num_attention_heads"))
        stated[f"{tower}.ln_eps"] = (float(cfg["layer_norm_eps"]), where(tower, "layer_norm_eps"))
    text = towers["text"]
    if model_type == "siglip":
        if not towers["vision"].get("vision_use_head", True):
            raise UnsupportedCheckpointError(f"{name}: vision_config.vision_use_head = false (no pooled image "
                                             "feature) is not supported")
        arch = f"{name} model_type 'siglip' (SiglipTextTransformer)"
        stated["text.causal"] = (False, arch + ": no causal mask")
        stated["text.pool"] = ("last", arch + ": the last position")
        stated["text.start_token"] = (False, arch + ": no start token")
        stated["vision.pool"] = ("map", f"{name} model_type 'siglip': attention-pooling head")
    else:
        arch = f"{name} model_type {model_type!r}"
        stated["text.causal"] = (True, arch + ": causal mask")
        stated["text.start_token"] = (True, arch + ": the tokenizer's start token")
        stated["vision.pool"] = ("tok", arch + ": the class token")
        eos = text["eos_token_id"]
        if isinstance(eos, list):
            raise UnsupportedCheckpointError(f"{name}: text_config.eos_token_id = {eos} (a list) is not supported")
        if eos is None:  # pooled at an end-of-text id the config does not give: the eos_id= argument
            stated["text.pool"] = ("eos", arch + ": the first end-of-text token")
            logger.info("%s: text_config.eos_token_id is null; the end-of-text id must be given (eos_id=...)", name)
        elif model_type == "clip" and eos == 2:
            stated["text.pool"] = ("argmax", where("text", "eos_token_id") + " = 2: transformers pools at argmax(ids)")
        else:
            stated["text.pool"] = ("eos", where("text", "eos_token_id") + ": the first eos_token_id")
            stated["text.eos_id"] = (int(eos), where("text", "eos_token_id"))
    vision = towers["vision"]
    expected = {
        "vision.image_size": square_size(vision["image_size"], "vision_config.image_size", name),
        "vision.patch_size": square_size(vision["patch_size"], "vision_config.patch_size", name),
    }
    expected["text.pad_token_id"] = text.get("pad_token_id")
    family = {"siglip": "siglip", "metaclip_2": "metaclip_2"}.get(model_type, "clip")
    return stated, family, expected


def hf_preprocess(
    preprocessor: Mapping[str, Any] | None, family: str, image_size: int, name: str = "preprocessor_config.json"
) -> Preprocess:
    """The eval preprocessing ``preprocessor_config.json`` states (else the image processor's defaults, at the
    model's resolution)."""
    if family == "siglip":
        defaults: dict[str, Any] = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3,
                                    "size": {"height": image_size, "width": image_size}, "do_center_crop": False}
        processor = "SiglipImageProcessor"
    else:
        defaults = {"image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD), "resample": 3,
                    "size": {"shortest_edge": image_size}, "do_center_crop": True,
                    "crop_size": {"height": image_size, "width": image_size}}
        processor = "CLIPImageProcessor"
    if preprocessor is None:
        return Preprocess(resize_mode="shortest" if family != "siglip" else "squash", interpolation="bicubic",
                          mean=defaults["image_mean"], std=defaults["image_std"],
                          source=f"transformers' {processor} defaults (no preprocessor_config.json)")
    p = {**defaults, **preprocessor}
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if p.get(flag, True) is False:
            raise UnsupportedCheckpointError(f"{name}: {flag} = false is not supported")
    if p["resample"] not in _RESAMPLE:
        raise UnsupportedCheckpointError(f"{name}: resample = {p['resample']} is not supported (2 bilinear, 3 bicubic)")
    size = p["size"]
    if isinstance(size, Mapping) and "shortest_edge" in size:
        mode, side = "shortest", int(size["shortest_edge"])
    elif isinstance(size, Mapping) and "height" in size:
        side = square_size([size["height"], size["width"]], "size", name)
        mode = "squash"
    else:
        mode, side = ("shortest" if p.get("do_center_crop") else "squash"), int(size)
    if mode == "shortest":
        crop = p.get("crop_size", side)
        crop_side = square_size([crop["height"], crop["width"]], "crop_size", name) if isinstance(crop, Mapping) else int(crop)
        if not p.get("do_center_crop") or crop_side != side:
            raise UnsupportedCheckpointError(f"{name}: a shortest-edge resize to {side} must be followed by a "
                                             f"centre crop of the same size (do_center_crop, crop_size)")
    if side != image_size:
        raise UnsupportedCheckpointError(f"{name}: images are resized to {side} px but the model takes {image_size}")
    return Preprocess(resize_mode=mode, interpolation=_RESAMPLE[p["resample"]], mean=p["image_mean"],
                      std=p["image_std"], source=name)
