""":func:`load`: any supported checkpoint to a frozen :class:`~mmprompt.clip.model.CLIP`, with no field guessed.

Shapes come from the tensors; every other field that changes the computation (heads, activation, LayerNorm
eps, causal mask, pooling) from the checkpoint's own ``config.json`` / ``open_clip_config.json`` (in the
folder or beside the file), the registry entry its SHA-256 matches, or an explicit argument (see
:mod:`mmprompt.clip.describe`). The preprocessing and tokenizer that come with the weights are attached to
the model (``config.preprocess``, ``model.tokenizer``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .config import CLIPConfig, Preprocess, shapes_from_state_dict
from .convert import CheckpointFile, check_state_dict, convert_to_openai, read_checkpoint, sniff_format
from .describe import Stated, UnsupportedCheckpointError, architecture_fields, assemble
from .hf import hf_preprocess, read_hf_config
from .hub import is_hub_name
from .model import CLIP
from .openclip import open_clip_preprocess, read_open_clip_config
from .weights import (
    PRETRAINED,
    PretrainedEntry,
    _entry_for_digest,
    _find_entry,
    fetch_pretrained,
    sha256_file,
)

__all__ = ["WeightsInfo", "load", "load_state_dict_any"]

logger = logging.getLogger(__name__)


@dataclass
class WeightsInfo:
    """How a checkpoint was read: format, conversions, the config and where each of its fields came from."""

    path: Path
    weights_file: Path
    file_format: str
    """"torchscript", "torch" or "safetensors"."""
    source_layout: str
    """"openai" (OpenAI / open_clip keys) or "hf" (Hugging Face CLIPModel / SiglipModel)."""
    conversions: list[str]
    activation: str
    activation_source: str
    config: CLIPConfig
    sha256: str | None = None
    pretrained: str | None = None
    """The registry entry the file is (by its digest, or as named), if any."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where each non-shape field was read: ``{"vision.heads": "config.json vision_config....", ...}``."""
    tokenizer_file: Path | None = None
    hf_pad_token_id: int | None = None
    hf_tokenizer_name: str | None = None
    """open_clip's ``text_cfg.hf_tokenizer_name`` (the text tower does not use CLIP's BPE)."""
    tokenizer_clean: str | None = None
    """How texts are cleaned before tokenization, when the checkpoint's config says it (open_clip's
    ``text_cfg.tokenizer_kwargs.clean`` or its default); None: the tokenizer's own default."""
    hub: str | None = None
    """``hf-hub:ORG/NAME@COMMIT`` when the weights came from the Hugging Face Hub by name."""


def _refuse_by_config(ckpt: CheckpointFile, path: Path) -> None:
    """What the configs beside the weights say is unsupported, said before the tensors are converted (whose
    layout would otherwise only be "unrecognised"): Hugging Face model types, open_clip ResNet towers."""
    from .convert import _read_json
    from .hf import refuse_unsupported_type

    folder = path if path.is_dir() else path.parent
    raw = ckpt.hf_config or _read_json(folder / "config.json")
    if raw is not None and ckpt.weights_path.name not in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        refuse_unsupported_type(raw, str(folder / "config.json"))
    vision = ((ckpt.open_clip_config or {}).get("model_cfg") or {}).get("vision_cfg") or {}
    if isinstance(vision.get("layers"), (list, tuple)):
        from .describe import UnsupportedCheckpointError

        raise UnsupportedCheckpointError(
            f"{folder / 'open_clip_config.json'}: model_cfg.vision_cfg.layers = {list(vision['layers'])} is a "
            "ResNet image tower; ResNet towers are not supported (ViT only)")


def _read_config_file(ckpt: CheckpointFile, config: str | Path) -> None:
    """An explicitly given ``config.json`` or ``open_clip_config.json`` replaces what was found beside the file."""
    path = Path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"config={path}: cannot read it as JSON ({exc})") from exc
    if "model_cfg" in data or "vision_cfg" in data:
        ckpt.open_clip_config, ckpt.hf_config = data, None
    elif {"text_config", "vision_config", "text_config_dict", "vision_config_dict"} & set(data):
        ckpt.hf_config, ckpt.open_clip_config = data, None
    else:
        raise ValueError(f"config={path}: neither a Hugging Face config.json (text_config / vision_config) nor "
                         "an open_clip config (model_cfg)")


def _check_expected(shapes: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    for key in ("vision.image_size", "vision.patch_size", "text.proj_bias"):
        if key in expected:
            tower, name = key.split(".")
            if shapes[tower][name] != expected[key]:
                raise UnsupportedCheckpointError(
                    f"{source}: the config says {key} = {expected[key]}, the weights have {shapes[tower][name]}"
                )


def load_state_dict_any(
    path: str | Path,
    activation: str | None = None,
    allow_torchscript: bool = False,
    *,
    registry: Mapping[str, PretrainedEntry] | None = None,
    pretrained: PretrainedEntry | None = None,
    sha256: str | None = None,
    architecture: str | None = None,
    config: str | Path | None = None,
    **fields: Any,
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Read any supported checkpoint at ``path`` and return it in OpenAI's key layout, with how it was read.

    ``activation`` and ``fields`` (``heads``, ``eps``, ``text_pool``, ``eos_id``, ``text_causal``,
    ``vision_pool``, ``final_ln_after_pool``) override what the checkpoint's config or registry entry
    states; ``architecture`` states every field of a named architecture; ``config`` is the path of a
    ``config.json`` / ``open_clip_config.json`` for weights kept away from theirs. A field known from none
    of these raises :class:`~mmprompt.clip.describe.MissingFieldError` naming the argument to pass. A
    TorchScript archive is read only with ``allow_torchscript`` or when its SHA-256 matches a registry entry.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    registry = PRETRAINED if registry is None else registry
    digest = sha256

    def file_digest() -> str | None:
        nonlocal digest
        if digest is None and path.is_file():
            digest = sha256_file(path)
        return digest

    trusted = allow_torchscript
    if path.is_file() and not trusted and sniff_format(path) == "torchscript":
        trusted = _entry_for_digest(file_digest(), registry) is not None
    ckpt = read_checkpoint(path, allow_torchscript=trusted)
    if config is not None:
        _read_config_file(ckpt, config)
    _refuse_by_config(ckpt, path)
    sd, conversions = convert_to_openai(ckpt.state_dict, source=str(path))
    is_hf = "hf_to_openai" in conversions
    shapes = shapes_from_state_dict(sd)
    image_size = shapes["vision"]["image_size"]

    stated: Stated = {}
    preprocess: Preprocess | None = None
    family, pad_token_id, hf_tokenizer_name, tokenizer_clean = "clip", None, None, None
    if is_hf and ckpt.hf_config is not None:
        stated, family, expected = read_hf_config(ckpt.hf_config)
        _check_expected(shapes, expected, str(path))
        preprocess = hf_preprocess(ckpt.preprocess, family, image_size)
        pad_token_id = expected.get("text.pad_token_id")
    elif not is_hf and ckpt.open_clip_config is not None:
        stated, expected = read_open_clip_config(ckpt.open_clip_config)
        _check_expected(shapes, expected, str(path))
        hf_tokenizer_name = expected.get("hf_tokenizer_name")
        tokenizer_clean = expected.get("tokenizer_clean")
        preprocess = open_clip_preprocess(ckpt.open_clip_config, image_size)
    has_config = bool(stated)
    matched = _entry_for_digest(digest, registry) or pretrained
    if matched is None and not has_config and architecture is None and path.is_file():
        matched = _entry_for_digest(file_digest(), registry)
    if matched is not None and not has_config:
        stated = {**architecture_fields(matched.architecture), **stated}
        where = f"registry entry {matched.name}"
        stated["vision.activation"] = stated["text.activation"] = (matched.activation, where)
        preprocess = Preprocess(interpolation=matched.interpolation, mean=matched.mean, std=matched.std, source=where)

    args = {"activation": activation, **fields}
    cfg, sources = assemble(shapes, stated, args, str(path), architecture=architecture, preprocess=preprocess,
                            family=family)
    info = WeightsInfo(
        path=path,
        weights_file=ckpt.weights_path,
        file_format=ckpt.file_format,
        source_layout="hf" if is_hf else "openai",
        conversions=conversions,
        activation=cfg.vision_activation if cfg.vision_activation == cfg.text_activation else
        f"{cfg.vision_activation}/{cfg.text_activation}",
        activation_source=sources.get("vision.activation", ""),
        config=cfg,
        sha256=digest,
        pretrained=matched.name if matched else None,
        sources=sources,
        tokenizer_file=ckpt.tokenizer_file,
        hf_pad_token_id=pad_token_id,
        hf_tokenizer_name=hf_tokenizer_name,
        tokenizer_clean=tokenizer_clean,
    )
    return sd, info


def _attach_tokenizer(model: CLIP, info: WeightsInfo) -> CLIP:
    """The tokenizer of ``tokenizer.json`` for towers that do not use CLIP's BPE (SigLIP, MetaCLIP 2)."""
    cfg = model.config
    if cfg.family == "clip" and cfg.text.vocab_size == 49408 and info.hf_tokenizer_name is None:
        if info.tokenizer_clean not in (None, "lower"):  # CLIP's BPE with the cleaning the config states
            from .tokenizer import Tokenizer

            model.tokenizer = Tokenizer(clean=info.tokenizer_clean)
        return model  # CLIP's BPE (mmprompt.clip.tokenizer), identical to OpenAI's
    if info.tokenizer_file is None:
        named = f" (open_clip names {info.hf_tokenizer_name}: put its tokenizer.json there)" if info.hf_tokenizer_name else ""
        logger.warning("%s: no tokenizer.json beside the weights%s; tokenize the texts yourself "
                       "(model.get_tokenizer() will refuse)", info.path, named)
        return model
    from .hf_tokenizer import HFTokenizer

    tokenizer = HFTokenizer.from_folder(info.tokenizer_file, info.hf_pad_token_id, info.tokenizer_clean or "none")
    if tokenizer.has_start_token != cfg.text.start_token:
        model.config = info.config = cfg.replace(text=replace(cfg.text, start_token=tokenizer.has_start_token))
        info.sources["text.start_token"] = f"{info.tokenizer_file.name}: post-processor"
    model.tokenizer = tokenizer
    return model


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    activation: str | None = None,
    allow_torchscript: bool = False,
    cache_dir: str | Path | None = None,
    *,
    registry: Mapping[str, PretrainedEntry] | None = None,
    verify: bool = True,
    progress: bool = True,
    architecture: str | None = None,
    config: str | Path | None = None,
    heads: int | tuple[int, int] | None = None,
    eps: float | tuple[float, float] | None = None,
    text_pool: str | None = None,
    eos_id: int | None = None,
    text_causal: bool | None = None,
    vision_pool: str | None = None,
    final_ln_after_pool: bool | None = None,
) -> CLIP:
    """A pretrained CLIP (or SigLIP) in eval mode with every parameter frozen (``requires_grad=False``).

    ``name_or_path`` is a registry name (see :func:`~mmprompt.clip.weights.list_pretrained`; downloaded
    once into the cache and verified) or a checkpoint path: an OpenAI TorchScript archive or state dict, an
    open_clip checkpoint (``.pt`` / ``.safetensors``, with its ``open_clip_config.json`` in the folder or
    beside the file), a Hugging Face ``CLIPModel`` / ``MetaClip2Model`` / ``SiglipModel`` folder or a weights
    file beside its ``config.json``. A string is tried as a registry name first; pass a
    :class:`~pathlib.Path` to force a path. ``"hf-hub:ORG/NAME[@REVISION]"`` and the open_clip-style names
    of :data:`~mmprompt.clip.hub.HUB_MODELS` (``"ViT-B-16/laion2b_s34b_b88k"``) are downloaded from the
    Hugging Face Hub into its cache (``HF_HOME``; nothing is downloaded with ``HF_HUB_OFFLINE=1``).

    Fields that are not in the tensors' shapes come from the checkpoint's config, else from the arguments:
    ``architecture`` (every field of a named architecture, e.g. ``"ViT-H/14"``), ``config`` (the path of a
    ``config.json`` / ``open_clip_config.json``), or one by one: ``heads`` (one int or ``(vision, text)``),
    ``activation`` (``"quick_gelu"``, ``"gelu"``, ``"gelu_tanh"``), ``eps`` (LayerNorm epsilon),
    ``text_pool`` (``"argmax"``, ``"eos"`` with ``eos_id``, ``"last"``, ``"first"``), ``text_causal``,
    ``vision_pool`` (``"tok"``, ``"avg"`` with ``final_ln_after_pool``). An argument given beside a config
    that says otherwise wins, with a warning. ``verify=False`` accepts registry files without (or without
    checking) a checksum. The model is cast to ``dtype`` and moved to ``device``; its config carries the
    preprocessing of the weights (``config.image_preprocess``) and ``model.tokenizer`` their tokenizer.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point type, got {dtype}")
    registry = PRETRAINED if registry is None else registry
    entry = _find_entry(name_or_path, registry) if isinstance(name_or_path, str) else None
    hub_weights = None
    if entry is not None:
        path = fetch_pretrained(entry, cache_dir=cache_dir, verify=verify, progress=progress)
        digest = entry.sha256 if verify else None
    elif is_hub_name(name_or_path):
        from .hub import fetch_hub

        hub_weights = fetch_hub(str(name_or_path))
        path, digest = hub_weights.path, None
    else:
        path, digest = Path(name_or_path), None
        if not path.exists():
            raise FileNotFoundError(
                f"CLIP weights not found: {path} (not a file or folder, nor a registered name: "
                f"{', '.join(registry)})"
            )
    sd, info = load_state_dict_any(
        path, activation, allow_torchscript, registry=registry, pretrained=entry, sha256=digest,
        architecture=architecture, config=config, heads=heads, eps=eps, text_pool=text_pool, eos_id=eos_id,
        text_causal=text_causal, vision_pool=vision_pool, final_ln_after_pool=final_ln_after_pool,
    )
    with torch.device("meta"):
        model = CLIP(info.config)
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    model = _attach_tokenizer(model, info)
    info.hub = hub_weights.spec if hub_weights is not None else None
    model.weights_info = info
    logger.info(
        "loaded %s from %s (%s, %s layout); fields: %s",
        info.config.family, path, info.file_format, info.source_layout,
        "; ".join(f"{k} from {v}" for k, v in sorted(info.sources.items())),
    )
    return model
