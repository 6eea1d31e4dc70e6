"""What ``open_clip_config.json`` states (``model_cfg`` and ``preprocess_cfg``), read with open_clip's semantics.

A key missing from ``model_cfg`` means open_clip's dataclass default (``CLIPVisionCfg`` / ``CLIPTextCfg``;
copied here as facts, checked against open_clip by the tests). Every key is either implemented, known to
have no effect on inference, or refused by name: an unknown key is refused too, so a new open_clip option
can never be silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import OPENAI_MEAN, OPENAI_STD, CLIPConfig, Preprocess
from .describe import Stated, UnsupportedCheckpointError, square_size
from .tokenizer import TEXT_CLEANING

__all__ = ["OPEN_CLIP_TEXT_DEFAULTS", "OPEN_CLIP_VISION_DEFAULTS", "open_clip_config", "open_clip_preprocess",
           "read_open_clip_config"]

_BLOCK_OPTIONS = {"block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                  "scale_attn_inner": False, "scale_attn": False, "scale_fc": False}
OPEN_CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224,
    "ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "attn_pooler_queries": 256,
    "attn_pooler_heads": 8, "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
    "pool_type": "tok", "output_tokens": False, "act_kwargs": None, "norm_kwargs": None, **_BLOCK_OPTIONS,
    "timm_model_name": None, "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear",
    "timm_proj_bias": False, "timm_drop": 0.0, "timm_drop_path": None,
}
OPEN_CLIP_TEXT_DEFAULTS: dict[str, Any] = {
    "context_length": 77, "vocab_size": 49408, "hf_tokenizer_name": None, "tokenizer_mode": None,
    "tokenizer_kwargs": None, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0, "ls_init_value": None,
    "embed_cls": False, "pad_id": 0, "eos_id": 2, "no_causal_mask": False, "final_ln_after_pool": False,
    "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "output_tokens": False,
    "act_kwargs": None, "norm_kwargs": None, **_BLOCK_OPTIONS, "hf_model_name": None,
    "hf_model_pretrained": True, "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler",
}
# Keys implemented (read below or from the tensors' shapes) or without effect on a frozen model in eval mode.
_HANDLED = {
    "vision": {"layers", "width", "mlp_ratio", "patch_size", "image_size", "patch_dropout", "output_tokens",
               "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool", "timm_proj",
               "timm_proj_bias", "timm_drop", "timm_drop_path", "head_width", "final_ln_after_pool", "pool_type",
               "act_kwargs", "norm_kwargs"},
    "text": {"context_length", "vocab_size", "tokenizer_mode", "tokenizer_kwargs", "width", "heads", "layers",
             "mlp_ratio", "pad_id", "output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type",
             "eos_id", "no_causal_mask", "final_ln_after_pool", "pool_type", "proj_bias", "proj_type",
             "act_kwargs", "norm_kwargs", "hf_tokenizer_name"},
}
# Options refused by name: (the value that is supported, what the option is)
_REFUSED = {
    "ls_init_value": (None, "layer scale"),
    "attentional_pool": (False, "attentional pooling (CoCa)"),
    "no_ln_pre": (False, "no_ln_pre (no LayerNorm before the vision blocks)"),
    "pos_embed_type": ("learnable", "a fixed position embedding"),
    "block_type": (None, "open_clip's custom attention block"),
    "qk_norm": (False, "qk-norm"),
    "scaled_cosine_attn": (False, "scaled cosine attention"),
    "scale_heads": (False, "per-head attention scales"),
    "scale_attn_inner": (False, "a LayerNorm inside attention"),
    "scale_attn": (False, "a LayerNorm after attention"),
    "scale_fc": (False, "a LayerNorm inside the MLP"),
    "timm_model_name": (None, "a timm image tower (e.g. EVA with RoPE / SwiGLU, ConvNeXt)"),
    "embed_cls": (False, "an appended class token (CoCa)"),
    "hf_model_name": (None, "a Hugging Face text tower"),
}
_TOP_LEVEL = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "init_logit_scale",
              "init_logit_bias", "nonscalar_logit_scale", "output_dict"}
_TOP_REFUSED = {"custom_text": "open_clip's CustomTextCLIP layout ('text.*' keys)",
                "multimodal_cfg": "a multimodal decoder (CoCa)"}


def _check_keys(tower: str, cfg: Mapping[str, Any], name: str) -> None:
    known = OPEN_CLIP_VISION_DEFAULTS if tower == "vision" else OPEN_CLIP_TEXT_DEFAULTS
    for key, value in cfg.items():
        if key in _REFUSED:
            supported, what = _REFUSED[key]
            if value != supported and not (key == "block_type" and value == "default"):
                raise UnsupportedCheckpointError(f"{name}: {tower}_cfg.{key} = {value!r}: {what} is not supported")
            continue
        if key not in known:
            raise UnsupportedCheckpointError(
                f"{name}: {tower}_cfg.{key} is an open_clip option mmprompt does not know; it may change the "
                "computation, so the checkpoint is refused"
            )
        if key not in _HANDLED[tower]:
            raise UnsupportedCheckpointError(f"{name}: {tower}_cfg.{key} = {value!r} is not supported")


def _activation(quick: bool, act_kwargs: Mapping[str, Any] | None, tower: str, name: str) -> str:
    kwargs = dict(act_kwargs or {})
    approximate = kwargs.pop("approximate", "none")
    if kwargs or approximate not in ("none", "tanh"):
        raise UnsupportedCheckpointError(f"{name}: {tower}_cfg.act_kwargs = {dict(act_kwargs or {})} is not supported "
                                         "(only approximate='tanh' or 'none')")
    if quick and approximate != "none":
        raise UnsupportedCheckpointError(f"{name}: quick_gelu with {tower}_cfg.act_kwargs {dict(act_kwargs or {})}")
    return "quick_gelu" if quick else ("gelu_tanh" if approximate == "tanh" else "gelu")


def _eps(norm_kwargs: Mapping[str, Any] | None, tower: str, name: str) -> float:
    kwargs = dict(norm_kwargs or {})
    eps = kwargs.pop("eps", 1e-5)
    if kwargs:
        raise UnsupportedCheckpointError(f"{name}: {tower}_cfg.norm_kwargs {sorted(kwargs)} are not supported "
                                         "(only eps)")
    return float(eps)


def read_open_clip_config(config: Mapping[str, Any], name: str = "open_clip_config.json") -> tuple[Stated, dict[str, Any]]:
    """The fields ``open_clip_config.json`` states, with their sources, and sizes the weights must have."""
    model_cfg = config.get("model_cfg", config)
    for key, what in _TOP_REFUSED.items():
        if model_cfg.get(key):
            raise UnsupportedCheckpointError(f"{name}: model_cfg.{key}: {what} is not supported")
    unknown = sorted(set(model_cfg) - _TOP_LEVEL - set(_TOP_REFUSED))
    if unknown:
        raise UnsupportedCheckpointError(f"{name}: model_cfg keys {unknown} are not known to mmprompt")
    v_given, t_given = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    _check_keys("vision", v_given, name)
    _check_keys("text", t_given, name)
    v = {**OPEN_CLIP_VISION_DEFAULTS, **v_given}
    t = {**OPEN_CLIP_TEXT_DEFAULTS, **t_given}
    quick = bool(model_cfg.get("quick_gelu", False))

    def src(tower: str, key: str) -> str:
        given = key in (v_given if tower == "vision" else t_given)
        return f"{name} {tower}_cfg.{key}" + ("" if given else " (open_clip default)")

    if v["pool_type"] not in ("tok", "avg"):
        raise UnsupportedCheckpointError(f"{name}: vision_cfg.pool_type = {v['pool_type']!r} is not supported")
    if t["pool_type"] not in ("argmax", "eos", "last", "first"):
        raise UnsupportedCheckpointError(f"{name}: text_cfg.pool_type = {t['pool_type']!r} is not supported")
    if t["proj_type"] != "linear":
        raise UnsupportedCheckpointError(f"{name}: text_cfg.proj_type = {t['proj_type']!r} (no text projection) "
                                         "is not supported")
    width, head_width = int(v["width"]), int(v["head_width"])
    if width % head_width:
        raise UnsupportedCheckpointError(f"{name}: vision_cfg.width {width} is not a multiple of head_width {head_width}")
    quick_src = f"{name} model_cfg.quick_gelu" + ("" if "quick_gelu" in model_cfg else " (open_clip default false)")
    stated: Stated = {
        "vision.heads": (width // head_width, f"{src('vision', 'width')} / {src('vision', 'head_width')}"),
        "text.heads": (int(t["heads"]), src("text", "heads")),
        "vision.activation": (_activation(quick, v["act_kwargs"], "vision", name),
                              f"{quick_src}, {src('vision', 'act_kwargs')}"),
        "text.activation": (_activation(quick, t["act_kwargs"], "text", name), f"{quick_src}, {src('text', 'act_kwargs')}"),
        "vision.ln_eps": (_eps(v["norm_kwargs"], "vision", name), src("vision", "norm_kwargs")),
        "text.ln_eps": (_eps(t["norm_kwargs"], "text", name), src("text", "norm_kwargs")),
        "vision.pool": (v["pool_type"], src("vision", "pool_type")),
        "vision.final_ln_after_pool": (bool(v["final_ln_after_pool"]), src("vision", "final_ln_after_pool")),
        "text.causal": (not t["no_causal_mask"], src("text", "no_causal_mask")),
        "text.pool": (t["pool_type"], src("text", "pool_type")),
    }
    if t["tokenizer_mode"] is not None:
        raise UnsupportedCheckpointError(f"{name}: text_cfg.tokenizer_mode = {t['tokenizer_mode']!r} is not supported")
    tokenizer_kwargs = dict(t["tokenizer_kwargs"] or {})
    # open_clip's defaults: CLIP's BPE lower-cases, its Hugging Face tokenizer wrapper only normalises whitespace
    clean = tokenizer_kwargs.pop("clean", "lower" if t["hf_tokenizer_name"] is None else "whitespace")
    if clean not in TEXT_CLEANING or clean == "none":
        raise UnsupportedCheckpointError(f"{name}: text_cfg.tokenizer_kwargs.clean = {clean!r} is not one of "
                                         "lower, whitespace, canonicalize")
    if tokenizer_kwargs:
        raise UnsupportedCheckpointError(f"{name}: text_cfg.tokenizer_kwargs {sorted(tokenizer_kwargs)} are not "
                                         "supported (only clean): the token ids could differ from open_clip's")
    if t["hf_tokenizer_name"] is None:  # CLIP's BPE puts SOT first; another tokenizer says it itself
        stated["text.start_token"] = (True, src("text", "hf_tokenizer_name") + ": CLIP's BPE, SOT first")
    if t["pool_type"] == "eos":
        stated["text.eos_id"] = (int(t["eos_id"]), src("text", "eos_id"))
    expected = {
        "vision.image_size": square_size(v["image_size"], "vision_cfg.image_size", name),
        "vision.patch_size": square_size(v["patch_size"], "vision_cfg.patch_size", name),
        "text.proj_bias": bool(t["proj_bias"]),
        "hf_tokenizer_name": t["hf_tokenizer_name"],
        "tokenizer_clean": clean,
    }
    return stated, expected


def open_clip_preprocess(config: Mapping[str, Any], image_size: int, name: str = "open_clip_config.json") -> Preprocess:
    """The eval preprocessing ``preprocess_cfg`` states (else open_clip's defaults)."""
    given = config.get("preprocess_cfg") or {}
    p = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest", **given}
    if p["interpolation"] not in ("bicubic", "bilinear"):
        raise UnsupportedCheckpointError(f"{name}: preprocess_cfg.interpolation = {p['interpolation']!r} is not supported")
    if p["resize_mode"] not in ("shortest", "squash"):
        raise UnsupportedCheckpointError(f"{name}: preprocess_cfg.resize_mode = {p['resize_mode']!r} is not supported "
                                         "(shortest, squash)")
    if "size" in p and square_size(p["size"], "preprocess_cfg.size", name) != image_size:
        raise UnsupportedCheckpointError(f"{name}: preprocess_cfg.size {p['size']} differs from the model's {image_size}")
    source = f"{name} preprocess_cfg" if given else f"open_clip defaults ({name} has no preprocess_cfg)"
    return Preprocess(resize_mode=p["resize_mode"], interpolation=p["interpolation"], mean=p["mean"], std=p["std"],
                      source=source)


def open_clip_config(config: CLIPConfig) -> dict[str, Any]:
    """The ``open_clip_config.json`` content that states ``config`` (heads, activations, eps, pooling,
    preprocessing), to save beside weights in OpenAI's layout so that :func:`mmprompt.clip.load` reads them
    back without arguments. Only what open_clip's ``CLIP`` can express is accepted."""
    v, t = config.vision, config.text
    if not (v.class_token and v.ln_pre and v.projection and not v.patch_bias and v.pool in ("tok", "avg")):
        raise ValueError("only OpenAI-style image towers (class token, ln_pre, projection, tok/avg pooling) "
                         "have an open_clip config")
    if config.logit_bias:
        raise ValueError("a learned logit_bias has no open_clip config value (its init value is not the weight)")

    def act(name: str) -> dict[str, Any] | None:
        return {"approximate": "tanh"} if name == "gelu_tanh" else None

    quick = {config.vision_activation, config.text_activation}
    if "quick_gelu" in quick and len(quick) > 1:
        raise ValueError("open_clip has one quick_gelu flag for both towers")
    vision: dict[str, Any] = {
        "image_size": v.image_size, "layers": v.layers, "width": v.width, "head_width": v.width // v.heads,
        "patch_size": v.patch_size, "mlp_ratio": v.mlp_ratio, "pool_type": v.pool,
        "final_ln_after_pool": v.final_ln_after_pool, "act_kwargs": act(config.vision_activation),
        "norm_kwargs": {"eps": v.ln_eps},
    }
    text: dict[str, Any] = {
        "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
        "layers": t.layers, "mlp_ratio": t.mlp_ratio, "no_causal_mask": not t.causal, "pool_type": t.pool,
        "proj_bias": t.proj_bias, "act_kwargs": act(config.text_activation), "norm_kwargs": {"eps": t.ln_eps},
    }
    if t.pool == "eos":
        text["eos_id"] = t.eos_id
    p = config.image_preprocess
    return {
        "model_cfg": {"embed_dim": config.embed_dim, "quick_gelu": quick == {"quick_gelu"},
                      "vision_cfg": vision, "text_cfg": text},
        "preprocess_cfg": {"mean": list(p.mean), "std": list(p.std), "interpolation": p.interpolation,
                           "resize_mode": p.resize_mode},
    }
