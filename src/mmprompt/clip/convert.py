"""Reading CLIP checkpoints of every supported layout and converting them to OpenAI's key names.

A checkpoint is read into a flat ``{key: tensor}`` dict (:func:`read_checkpoint`), then passed through
an ordered list of small conversion steps (:data:`CONVERSIONS`), each of which changes the dict only
when its layout applies. The result must be in OpenAI's layout, which is the one
:class:`mmprompt.clip.model.CLIP` loads strictly:

1. OpenAI TorchScript archive (its ``state_dict()`` plus three int entries, dropped);
2. OpenAI state dict;
3. open_clip checkpoint of a ViT CLIP (OpenAI keys, possibly under ``state_dict``, with ``module.``
   prefixes and an ``attn_mask`` buffer), ``.pt`` or ``.safetensors``;
4. Hugging Face ``CLIPModel`` (``text_model.*`` / ``vision_model.*``, separate q/k/v projections).
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
    "Hugging Face CLIPModel (text_model.*, vision_model.*, text_projection.weight, visual_projection.weight)"
)


class UnknownLayoutError(ValueError):
    """The checkpoint's keys match none of the layouts this module converts."""


class CheckpointFile:
    """What :func:`read_checkpoint` found: the raw tensors and any configuration beside them."""

    def __init__(
        self,
        state_dict: StateDict,
        file_format: str,
        weights_path: Path,
        hf_config: Mapping[str, Any] | None = None,
        open_clip_config: Mapping[str, Any] | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        self.state_dict = state_dict
        self.file_format = file_format
        """"torchscript", "torch" or "safetensors"."""
        self.weights_path = weights_path
        """The file the tensors came from (inside the folder, for a folder)."""
        self.hf_config = hf_config
        self.open_clip_config = open_clip_config
        self.preprocess = preprocess
        """Hugging Face ``preprocessor_config.json``, when present."""

    def _hf_tower(self, tower: str) -> Mapping[str, Any]:
        assert self.hf_config is not None
        return self.hf_config.get(f"{tower}_config") or self.hf_config.get(f"{tower}_config_dict") or {}

    def activation(self) -> tuple[str | None, str]:
        """The MLP activation the checkpoint's own config states, and where it was read; ``None`` if none."""
        if self.hf_config is not None:
            # transformers' CLIP default is "quick_gelu", and config.json may omit default values.
            acts = {t: self._hf_tower(t).get("hidden_act", "quick_gelu") for t in ("text", "vision")}
            if len(set(acts.values())) != 1 or acts["text"] not in ("quick_gelu", "gelu"):
                raise ValueError(
                    f"config.json: hidden_act {acts} is not supported; both towers must use "
                    "'quick_gelu' or both 'gelu'"
                )
            return acts["text"], "config.json hidden_act"
        if self.open_clip_config is not None:
            quick = bool((self.open_clip_config.get("model_cfg") or {}).get("quick_gelu", False))
            return ("quick_gelu" if quick else "gelu"), "open_clip_config.json quick_gelu"
        return None, ""

    def heads(self) -> dict[str, int]:
        """Attention heads per tower (``"text"``, ``"vision"``) stated by the config (or its defaults)."""
        if self.hf_config is not None:
            return {
                "text": int(self._hf_tower("text").get("num_attention_heads", 8)),
                "vision": int(self._hf_tower("vision").get("num_attention_heads", 12)),
            }
        model_cfg = (self.open_clip_config or {}).get("model_cfg") or {}
        out: dict[str, int] = {}
        if "text_cfg" in model_cfg:
            out["text"] = int(model_cfg["text_cfg"].get("heads", 8))
        if "vision_cfg" in model_cfg:
            v = model_cfg["vision_cfg"]
            out["vision"] = int(v.get("width", 768)) // int(v.get("head_width", 64))
        return out

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Image normalisation stated beside the weights, if any."""
        if self.preprocess and "image_mean" in self.preprocess:
            return tuple(self.preprocess["image_mean"]), tuple(self.preprocess["image_std"])
        pre = (self.open_clip_config or {}).get("preprocess_cfg") or {}
        if "mean" in pre:
            return tuple(pre["mean"]), tuple(pre["std"])
        return None


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
    """``folder/config.json`` when it is a Hugging Face CLIPModel configuration."""
    config = _read_json(folder / "config.json")
    if config is None or not ({"text_config", "vision_config"} & set(config)):
        return None
    return config


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    return dict(load_file(str(path), device="cpu"))


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
    hf_config = _clip_config(folder)
    preprocess = _read_json(folder / "preprocessor_config.json")
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            reader = _load_safetensors if name.endswith(".safetensors") else _load_torch
            fmt = "safetensors" if name.endswith(".safetensors") else "torch"
            return CheckpointFile(
                reader(folder / name), fmt, folder / name, hf_config=hf_config, preprocess=preprocess
            )
    for name in (f"{HF_WEIGHT_FILES[0]}.index.json", f"{HF_WEIGHT_FILES[1]}.index.json"):
        if (folder / name).is_file():
            fmt = "safetensors" if "safetensors" in name else "torch"
            return CheckpointFile(
                _load_sharded(folder, name), fmt, folder / name, hf_config=hf_config, preprocess=preprocess
            )
    for name in OPEN_CLIP_WEIGHT_FILES:
        if (folder / name).is_file():
            reader = _load_safetensors if name.endswith(".safetensors") else _load_torch
            fmt = "safetensors" if name.endswith(".safetensors") else "torch"
            return CheckpointFile(
                reader(folder / name),
                fmt,
                folder / name,
                open_clip_config=_read_json(folder / "open_clip_config.json"),
            )
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
    # A file taken from a Hugging Face folder keeps the folder's config (activation, heads).
    reader = _load_safetensors if fmt == "safetensors" else _load_torch
    return CheckpointFile(reader(path), fmt, path, hf_config=_clip_config(path.parent))


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
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
_HF_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def hf_to_openai(sd: StateDict) -> StateDict:
    """Hugging Face ``CLIPModel`` keys to OpenAI's: renames, q/k/v merged, projections transposed."""
    if not any(k.startswith(("text_model.", "vision_model.")) for k in sd):
        return sd
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in ("text_projection.weight", "visual_projection.weight"):
            # Linear(width, embed, bias=False).weight is [embed, width]; OpenAI keeps x @ proj: [width, embed]
            name = "text_projection" if key.startswith("text") else "visual.proj"
            out[name] = value.t().contiguous()
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


Conversion = Callable[[StateDict], StateDict]

CONVERSIONS: tuple[Conversion, ...] = (unwrap_state_dict, strip_module_prefix, drop_non_weights, hf_to_openai)
"""Applied in order; each returns its input unchanged when its layout does not apply."""


def detect_layout(sd: Mapping[str, Any]) -> str:
    """``"openai"``, ``"hf"``, or a short name of a layout that is recognised but not supported."""
    keys = set(sd)
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
