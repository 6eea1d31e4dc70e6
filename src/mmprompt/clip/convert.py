"""Reading CLIP checkpoints of every supported layout and converting them to OpenAI's key names.

A checkpoint is read into a flat ``{key: tensor}`` dict (:func:`read_checkpoint`), then passed through
an ordered list of small conversion steps (:data:`CONVERSIONS`), each of which changes the dict only
when its layout applies. The result must be in OpenAI's layout, which is the one
:class:`mmprompt.clip.model.CLIP` loads strictly:

1. OpenAI TorchScript archive (its ``state_dict()`` plus three int entries, dropped);
2. OpenAI state dict;
3. open_clip checkpoint of a ViT CLIP (OpenAI keys, possibly under ``state_dict``, with ``module.``
   prefixes and an ``attn_mask`` buffer), ``.pt`` or ``.safetensors``;
4. Hugging Face ``CLIPModel``, ``MetaClip2Model`` and ``SiglipModel`` (``text_model.*`` / ``vision_model.*``,
   separate q/k/v projections).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CONVERSIONS",
    "CheckpointFile",
    "UnknownLayoutError",
    "check_state_dict",
    "convert_to_openai",
    "detect_layout",
    "hf_to_openai",
    "read_checkpoint",
    "sniff_format",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, Any]

TORCHSCRIPT_INT_KEYS = ("input_resolution", "context_length", "vocab_size")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
LAYOUTS_UNDERSTOOD = (
    "OpenAI CLIP ViT (visual.conv1.weight, visual.transformer.resblocks.N.*, transformer.resblocks.N.*, "
    "token_embedding.weight, ...), as a TorchScript archive or a state dict; "
    "open_clip ViT checkpoints (the same keys, optionally under 'state_dict', with 'module.' prefixes); "
    "Hugging Face CLIPModel / MetaClip2Model (text_model.*, vision_model.*, text_projection.weight, "
    "visual_projection.weight) and SiglipModel (text_model.head.*, vision_model.head.*)"
)


class UnknownLayoutError(ValueError):
    """The checkpoint's keys match none of the layouts this module converts."""


class CheckpointFile:
    """What :func:`read_checkpoint` found: the raw tensors and the configuration files beside them."""

    def __init__(
        self,
        state_dict: StateDict,
        file_format: str,
        weights_path: Path,
        hf_config: Mapping[str, Any] | None = None,
        open_clip_config: Mapping[str, Any] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        tokenizer_file: Path | None = None,
    ) -> None:
        self.state_dict = state_dict
        self.file_format = file_format
        """"torchscript", "torch" or "safetensors"."""
        self.weights_path = weights_path
        """The file the tensors came from (inside the folder, for a folder)."""
        self.hf_config = hf_config
        """Hugging Face ``config.json`` in the folder or beside the file."""
        self.open_clip_config = open_clip_config
        """``open_clip_config.json`` in the folder or beside the file."""
        self.preprocess = preprocess
        """Hugging Face ``preprocessor_config.json``, when present."""
        self.tokenizer_file = tokenizer_file
        """``tokenizer.json`` in the folder or beside the file, when present."""


# ----------------------------------------------------------------------------------------------- reading
def sniff_format(path: Path) -> str:
    """``"torchscript"``, ``"torch"`` or ``"safetensors"``, from the file's bytes (never by executing it)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            # torch.jit.save writes constants.pkl and code/; torch.save never does (torch checks the same).
            if any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in zf.namelist()):
                return "torchscript"
        return "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        return "safetensors"
    return "torch"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _clip_config(folder: Path) -> dict[str, Any] | None:
    """``folder/config.json`` when it is a Hugging Face two-tower (CLIP / SigLIP) configuration."""
    config = _read_json(folder / "config.json")
    towers = {"text_config", "vision_config", "text_config_dict", "vision_config_dict"}
    if config is None or not (towers & set(config)):
        return None
    return config


def _beside(folder: Path) -> dict[str, Any]:
    """The configuration files a checkpoint in ``folder`` may come with."""
    tokenizer = folder / "tokenizer.json"
    return {
        "hf_config": _clip_config(folder),
        "open_clip_config": _read_json(folder / "open_clip_config.json"),
        "preprocess": _read_json(folder / "preprocessor_config.json"),
        "tokenizer_file": tokenizer if tokenizer.is_file() else None,
    }


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - safetensors reports a bad file with its own error types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable safetensors file ({reason}); it is truncated or damaged: "
                         "download it again") from None


def _load_torch(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(
            f"could not read {path} with torch.load(weights_only=True): {exc}. Only tensors, dicts and plain "
            "values are accepted (no pickled objects); OpenAI TorchScript archives are read separately."
        ) from exc
    if not isinstance(obj, Mapping):
        raise UnknownLayoutError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _load_sharded(folder: Path, index_file: str) -> StateDict:
    index = _read_json(folder / index_file) or {}
    state: StateDict = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        shard_path = folder / shard
        state.update(
            _load_safetensors(shard_path) if shard.endswith(".safetensors") else _load_torch(shard_path)
        )
    return state


def _read_folder(folder: Path) -> CheckpointFile:
    beside = _beside(folder)
    if beside["hf_config"] is None and beside["open_clip_config"] is not None:
        # a hub folder with open_clip's files beside another library's (timm's model.safetensors + config.json)
        for name in OPEN_CLIP_WEIGHT_FILES:
            if (folder / name).is_file():
                reader = _load_safetensors if name.endswith(".safetensors") else _load_torch
                fmt = "safetensors" if name.endswith(".safetensors") else "torch"
                return CheckpointFile(reader(folder / name), fmt, folder / name, **beside)
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            reader = _load_safetensors if name.endswith(".safetensors") else _load_torch
            fmt = "safetensors" if name.endswith(".safetensors") else "torch"
            return CheckpointFile(reader(folder / name), fmt, folder / name, **beside)
    for name in (f"{HF_WEIGHT_FILES[0]}.index.json", f"{HF_WEIGHT_FILES[1]}.index.json"):
        if (folder / name).is_file():
            fmt = "safetensors" if "safetensors" in name else "torch"
            return CheckpointFile(_load_sharded(folder, name), fmt, folder / name, **beside)
    for name in OPEN_CLIP_WEIGHT_FILES:
        if (folder / name).is_file():
            reader = _load_safetensors if name.endswith(".safetensors") else _load_torch
            fmt = "safetensors" if name.endswith(".safetensors") else "torch"
            return CheckpointFile(reader(folder / name), fmt, folder / name, **beside)
    raise FileNotFoundError(
        f"{folder} is a folder but holds none of {HF_WEIGHT_FILES + OPEN_CLIP_WEIGHT_FILES} "
        "(or a sharded *.index.json)"
    )


def read_checkpoint(path: str | Path, allow_torchscript: bool) -> CheckpointFile:
    """Read ``path`` (a file or a Hugging Face / open_clip folder) into raw tensors.

    TorchScript archives are loaded only with ``allow_torchscript`` (``torch.jit.load`` runs code from the
    file); everything else goes through ``torch.load(weights_only=True)`` or safetensors.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    if path.is_dir():
        return _read_folder(path)
    fmt = sniff_format(path)
    if fmt == "torchscript":
        if not allow_torchscript:
            raise PermissionError(
                f"{path} is a TorchScript archive; loading one runs code stored in the file. It is accepted "
                "when its SHA-256 matches a registered OpenAI release, or with allow_torchscript=True if you "
                "trust where the file came from."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # OpenAI's releases are TorchScript archives
            module = torch.jit.load(str(path), map_location="cpu")
        return CheckpointFile(dict(module.state_dict()), fmt, path)
    # A file taken from a folder keeps the folder's configs (config.json / open_clip_config.json).
    reader = _load_safetensors if fmt == "safetensors" else _load_torch
    return CheckpointFile(reader(path), fmt, path, **_beside(path.parent))


# -------------------------------------------------------------------------------------------- conversions
def unwrap_state_dict(sd: StateDict) -> StateDict:
    """Training checkpoints (open_clip, Lightning, Dassl) keep the weights under ``state_dict``."""
    for key in ("state_dict", "model", "module"):
        if key in sd and isinstance(sd[key], Mapping) and not any(isinstance(v, Tensor) for v in sd.values()):
            return dict(sd[key])
    return sd


def strip_module_prefix(sd: StateDict) -> StateDict:
    """``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def drop_non_weights(sd: StateDict) -> StateDict:
    """TorchScript's int entries, open_clip's ``attn_mask`` and Hugging Face's ``position_ids`` buffers."""
    return {
        k: v
        for k, v in sd.items()
        if k not in TORCHSCRIPT_INT_KEYS and k.rsplit(".", 1)[-1] not in ("attn_mask", "position_ids")
    }


_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^text_model\.embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    # SigLIP's attention-pooling head (an nn.MultiheadAttention: in_proj already merged)
    (r"^vision_model\.head\.attention\.", "visual.attn_pool.attn."),
    (r"^vision_model\.head\.layernorm\.", "visual.attn_pool.ln."),
    (r"^vision_model\.head\.", "visual.attn_pool."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
_HF_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
# Linear(width, embed).weight is [embed, width]; OpenAI keeps x @ proj: [width, embed]
_HF_PROJECTIONS = {
    "text_projection.weight": "text_projection",  # CLIP
    "visual_projection.weight": "visual.proj",  # CLIP
    "text_model.head.weight": "text_projection",  # SigLIP
}


def hf_to_openai(sd: StateDict) -> StateDict:
    """Hugging Face ``CLIPModel`` / ``SiglipModel`` keys to OpenAI's: renames, q/k/v merged, projections
    transposed (SigLIP's text head bias becomes ``text_projection_bias``)."""
    if not any(k.startswith(("text_model.", "vision_model.")) for k in sd):
        return sd
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_PROJECTIONS:
            out[_HF_PROJECTIONS[key]] = value.t().contiguous()
            continue
        if key == "text_model.head.bias":
            out["text_projection_bias"] = value
            continue
        new = key
        for pattern, repl in _HF_RENAMES:
            new = re.sub(pattern, repl, new)
        if match := _HF_QKV.match(new):
            block, which, kind = match.groups()
            qkv.setdefault((block, kind), {})[which] = value
            continue
        out[new] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise UnknownLayoutError(f"{block}: found only {sorted(parts)} of the q/k/v {kind} projections")
        out[f"{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def linear_text_projection(sd: StateDict) -> StateDict:
    """open_clip's ``proj_bias`` text projection (an ``nn.Linear``) to ``text_projection`` [width, embed]
    and ``text_projection_bias``."""
    if "text_projection.weight" not in sd or "visual.conv1.weight" not in sd:
        return sd
    out = {k: v for k, v in sd.items() if not k.startswith("text_projection.")}
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    if "text_projection.bias" in sd:
        out["text_projection_bias"] = sd["text_projection.bias"]
    return out


def scalar_logit_parameters(sd: StateDict) -> StateDict:
    """``logit_scale`` / ``logit_bias`` of shape [1] (SigLIP, open_clip ``nonscalar_logit_scale``) as scalars."""
    if not any(k in sd and isinstance(sd[k], Tensor) and sd[k].dim() == 1 for k in ("logit_scale", "logit_bias")):
        return sd
    out = dict(sd)
    for key in ("logit_scale", "logit_bias"):
        value = sd.get(key)
        if isinstance(value, Tensor) and value.shape == (1,):
            out[key] = value.reshape(())
    return out


Conversion = Callable[[StateDict], StateDict]

CONVERSIONS: tuple[Conversion, ...] = (
    unwrap_state_dict,
    strip_module_prefix,
    drop_non_weights,
    hf_to_openai,
    linear_text_projection,
    scalar_logit_parameters,
)
"""Applied in order; each returns its input unchanged when its layout does not apply."""


def detect_layout(sd: Mapping[str, Any]) -> str:
    """``"openai"``, ``"hf"``, or a short name of a layout that is recognised but not supported."""
    keys = set(sd)
    if "visual.trunk.conv1.weight" in keys or any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip-timm"
    if {"visual.conv1.weight", "token_embedding.weight", "text_projection"} <= keys:
        return "openai"
    if any(k.startswith(("text_model.", "vision_model.")) for k in keys):
        return "hf"
    if any(k.startswith("visual.layer1.") for k in keys):
        return "openai-resnet"
    if any(k.startswith(("text.transformer.", "text.token_embedding")) for k in keys):
        return "open_clip-custom-text"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip-timm"
    return "unknown"


_UNSUPPORTED = {
    "openai-resnet": "ResNet CLIP image towers are not supported (ViT only)",
    "open_clip-custom-text": "open_clip's custom-text layout ('text.*' keys) is not supported",
    "open_clip-timm": "open_clip models with a timm image tower ('visual.trunk.*') are not supported",
}


def convert_to_openai(sd: StateDict, source: str = "checkpoint") -> tuple[StateDict, list[str]]:
    """Run :data:`CONVERSIONS` on ``sd``: the result in OpenAI's layout and the names of the steps applied.

    Raises :class:`UnknownLayoutError` naming a sample of the keys when the result is not OpenAI's layout.
    """
    applied: list[str] = []
    for step in CONVERSIONS:
        before = sd
        sd = step(sd)
        if sd.keys() != before.keys():
            applied.append(step.__name__)
    layout = detect_layout(sd)
    if layout != "openai":
        sample = sorted(sd)[:12]
        reason = _UNSUPPORTED.get(layout, "unrecognised layout")
        raise UnknownLayoutError(
            f"{source}: {reason}. It has {len(sd)} entries, e.g. {sample}. "
            f"Layouts understood: {LAYOUTS_UNDERSTOOD}."
        )
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise UnknownLayoutError(f"{source}: entries that are not tensors: {bad[:12]}")
    logger.debug("%s: conversions applied: %s", source, applied or "none")
    return sd, applied


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, Tensor], source: str) -> None:
    """Raise a :class:`RuntimeError` listing the missing, unexpected and mis-shaped keys of ``sd``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)}, model {shape}"
        for k, shape in expected.items()
        if k in sd and tuple(sd[k].shape) != shape
    ]
    found = (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {items[:20]}" for label, items in found if items]
        raise RuntimeError(f"{source} does not fit the CLIP it describes; " + "; ".join(parts))
