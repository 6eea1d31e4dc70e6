"""CLIP weights by name from the Hugging Face Hub: ``hf-hub:ORG/NAME[@REVISION]`` and open_clip-style names.

:func:`fetch_hub` downloads the configs of a repository with ``huggingface_hub`` (into its standard cache:
``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), decides whether it is an
open_clip repository (``open_clip_config.json``) or a transformers one (``config.json`` with two towers),
checks the fields the name table expects, then downloads only that layout's weights. With
``HF_HUB_OFFLINE=1`` nothing is downloaded: the cache is read through ``huggingface_hub``'s own resolution
(``refs/<revision>`` -> ``snapshots/<commit>``). The weights are then read by the exact loaders
(:func:`mmprompt.clip.load`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .describe import UnsupportedCheckpointError
from .weights import WeightsUnavailableError

__all__ = ["HUB_MODELS", "HubModel", "HubWeights", "fetch_hub", "is_hub_name", "parse_hub_spec"]

PREFIX = "hf-hub:"
_CONFIGS = ["*.json", "*.txt", "*.model"]  # configs and tokenizer files, small
_WEIGHTS = {"open_clip": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
            "transformers": ("model.safetensors", "pytorch_model.bin")}


@dataclass(frozen=True)
class HubModel:
    """A named release on the Hub: its repository, layout, and the config fields it must have."""

    name: str
    repo: str
    layout: Literal["open_clip", "transformers"]
    family: str
    params: str
    """Approximate parameter count of the two towers, from the model card."""
    licence: str
    expected: dict[str, Any] = field(default_factory=dict)
    """Dotted config fields (``model_cfg.vision_cfg.patch_size`` / ``vision_config.patch_size``) and values."""


def _oc(name: str, repo: str, family: str, params: str, licence: str, embed: int, patch: int,
        size: int = 224) -> HubModel:
    return HubModel(name, repo, "open_clip", family, params, licence,
                    {"model_cfg.embed_dim": embed, "model_cfg.vision_cfg.patch_size": patch,
                     "model_cfg.vision_cfg.image_size": size})


def _hf(repo: str, family: str, params: str, licence: str, model_type: str, patch: int) -> HubModel:
    return HubModel(repo, repo, "transformers", family, params, licence,
                    {"model_type": model_type, "vision_config.patch_size": patch})


_MIT, _APACHE = "MIT", "Apache-2.0"


def _sig(name: str, repo: str, params: str, patch: int, size: int) -> HubModel:
    return HubModel(name, repo, "transformers", "siglip", params, _APACHE,
                    {"model_type": "siglip", "vision_config.patch_size": patch, "vision_config.image_size": size})


_TABLE = [
    _oc("ViT-B-32/laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "clip (LAION-2B)", "151M", _MIT,
        512, 32),
    _oc("ViT-B-16/laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "clip (LAION-2B)", "150M", _MIT,
        512, 16),
    _oc("ViT-L-14/laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "clip (LAION-2B)", "428M", _MIT,
        768, 14),
    _oc("ViT-H-14/laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "clip (LAION-2B)", "986M", _MIT,
        1024, 14),
    _oc("ViT-bigG-14/laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "clip (LAION-2B)", "2.5B",
        _MIT, 1280, 14),
    _oc("ViT-L-14-quickgelu/dfn2b", "apple/DFN2B-CLIP-ViT-L-14", "clip (DFN)", "428M",
        "Apple sample code licence (apple-amlr): see the model card", 768, 14),
    _oc("ViT-H-14-quickgelu/dfn5b", "apple/DFN5B-CLIP-ViT-H-14", "clip (DFN)", "986M",
        "Apple sample code licence (apple-amlr): see the model card", 1024, 14),
    # open_clip's SigLIP repositories (timm/...) hold a timm image tower, which the exact loaders refuse; the
    # same WebLI weights are published by Google as transformers SiglipModel folders, which load
    _sig("ViT-B-16-SigLIP/webli", "google/siglip-base-patch16-224", "203M", 16, 224),
    _sig("ViT-SO400M-14-SigLIP/webli", "google/siglip-so400m-patch14-224", "878M", 14, 224),
    _sig("ViT-SO400M-14-SigLIP-384/webli", "google/siglip-so400m-patch14-384", "878M", 14, 384),
    _hf("openai/clip-vit-base-patch32", "clip (OpenAI)", "151M", _MIT, "clip", 32),
    _hf("openai/clip-vit-base-patch16", "clip (OpenAI)", "150M", _MIT, "clip", 16),
    _hf("openai/clip-vit-large-patch14", "clip (OpenAI)", "428M", _MIT, "clip", 14),
    _hf("facebook/metaclip-b16-fullcc2.5b", "clip (MetaCLIP)", "150M", "CC-BY-NC-4.0 (non-commercial)", "clip", 16),
]
HUB_MODELS: dict[str, HubModel] = {m.name: m for m in _TABLE}
"""Known names: open_clip-style ``ARCH/PRETRAINED`` names and Hub repositories, with what they must be."""
_ALIASES = {"ViT-B-16-SigLIP": "ViT-B-16-SigLIP/webli", "ViT-SO400M-14-SigLIP": "ViT-SO400M-14-SigLIP/webli",
            "ViT-SO400M-14-SigLIP-384": "ViT-SO400M-14-SigLIP-384/webli"}


@dataclass(frozen=True)
class HubWeights:
    path: Path
    """The weights file (open_clip) or the snapshot folder (transformers) to pass to the loader."""
    repo: str
    commit: str
    layout: str

    @property
    def spec(self) -> str:
        """``hf-hub:ORG/NAME@COMMIT``: the exact weights, to record with a run."""
        return f"{PREFIX}{self.repo}@{self.commit}"


def is_hub_name(name: Any) -> bool:
    """True for ``hf-hub:...`` and for the open_clip-style names of :data:`HUB_MODELS` (a repository id
    needs the ``hf-hub:`` prefix, and an existing local path of the same name wins)."""
    if not isinstance(name, str):
        return False
    if name.startswith(PREFIX):
        return True
    known = name in _ALIASES or (name in HUB_MODELS and HUB_MODELS[name].repo != name)
    return known and not Path(name).exists()


def parse_hub_spec(name: str) -> tuple[str, str | None, HubModel | None]:
    """``(repo, revision or None, table entry or None)`` of a hub name."""
    name = _ALIASES.get(name, name)
    if name in HUB_MODELS:
        return HUB_MODELS[name].repo, None, HUB_MODELS[name]
    spec = name[len(PREFIX):]
    repo, at, revision = spec.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo) or (at and not revision):
        raise ValueError(f"{name!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    entry = next((m for m in _TABLE if m.repo == repo), None)
    return repo, revision or None, entry


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment now (not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _get(config: dict[str, Any], dotted: str, layout: str) -> Any:
    """A config field as the loaders read it: keys a file leaves out take the library's defaults."""
    from .hf import HF_DEFAULTS, hf_tower
    from .openclip import OPEN_CLIP_TEXT_DEFAULTS, OPEN_CLIP_VISION_DEFAULTS

    parts = dotted.split(".")
    if layout == "transformers" and parts[0] in ("vision_config", "text_config") and len(parts) == 2:
        defaults = HF_DEFAULTS.get(config.get("model_type", ""), {}).get(parts[0].split("_")[0], {})
        return hf_tower(config, parts[0].split("_")[0], defaults).get(parts[1])
    if layout == "open_clip" and parts[:2] in (["model_cfg", "vision_cfg"], ["model_cfg", "text_cfg"]) \
            and len(parts) == 3:
        defaults = OPEN_CLIP_VISION_DEFAULTS if parts[1] == "vision_cfg" else OPEN_CLIP_TEXT_DEFAULTS
        return {**defaults, **(config.get("model_cfg", {}).get(parts[1]) or {})}.get(parts[2])
    value: Any = config
    for part in parts:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _layout(folder: Path, repo: str) -> tuple[str, dict[str, Any]]:
    def read(name: str) -> dict[str, Any] | None:
        try:
            return json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    oc = read("open_clip_config.json")
    if oc is not None and "model_cfg" in oc:
        return "open_clip", oc
    hf = read("config.json")
    if hf is not None and {"text_config", "vision_config", "text_config_dict", "vision_config_dict"} & set(hf):
        return "transformers", hf
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise UnsupportedCheckpointError(
        f"hf-hub:{repo} is neither an open_clip repository (open_clip_config.json with model_cfg) nor a "
        f"transformers CLIP / SigLIP repository (config.json with text_config and vision_config); it holds: {found}")


def fetch_hub(name: str, cache_dir: str | Path | None = None) -> HubWeights:
    """Download (or, offline, find in the cache) the weights a hub name stands for; see the module doc."""
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors
    except ImportError as exc:  # pragma: no cover - a dependency
        raise WeightsUnavailableError("hf-hub: names need huggingface_hub: pip install huggingface_hub") from exc
    repo, revision, entry = parse_hub_spec(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _cache_dir()
    from .weights import offline_mode

    offline = _env_flag("HF_HUB_OFFLINE") or offline_mode()  # MMPROMPT_OFFLINE forbids every download too
    where = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    hub_errors = (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.LocalEntryNotFoundError,
                  errors.HfHubHTTPError, errors.OfflineModeIsEnabled, OSError)
    try:
        folder = Path(hub.snapshot_download(repo, revision=revision, allow_patterns=_CONFIGS, cache_dir=cache,
                                            local_files_only=offline))
    except hub_errors as exc:
        if offline:
            raise WeightsUnavailableError(
                f"{where}: {'revision ' + repr(revision) if revision else 'the repository'} is not in the Hugging "
                f"Face cache at {cache}, and HF_HUB_OFFLINE (or MMPROMPT_OFFLINE) is set so nothing is downloaded. Run once with the "
                "internet (without HF_HUB_OFFLINE), or point HF_HOME at the cache that holds it.") from exc
        raise WeightsUnavailableError(f"{where}: could not download it from the Hugging Face Hub "
                                      f"({type(exc).__name__}: {exc})") from exc
    layout, config = _layout(folder, repo)
    for key, value in (entry.expected if entry else {}).items():
        actual = _get(config, key, layout)
        if actual != value:
            raise UnsupportedCheckpointError(
                f"{where}: its config says {key} = {actual!r}, but {name} is expected to have {value!r}; the "
                "repository is not the release the name stands for")
    commit = folder.name
    if layout == "transformers" and any((folder / f"{w}.index.json").is_file() for w in _WEIGHTS[layout]):
        index = json.loads(next(folder / f"{w}.index.json" for w in _WEIGHTS[layout]
                                if (folder / f"{w}.index.json").is_file()).read_text(encoding="utf-8"))
        candidates: tuple[str, ...] = tuple(sorted(set(index.get("weight_map", {}).values())))
        need_all = True
    else:
        candidates, need_all = _WEIGHTS[layout], False
    got: list[Path] = []
    for filename in candidates:
        try:
            got.append(Path(hub.hf_hub_download(repo, filename, revision=commit, cache_dir=cache,
                                                local_files_only=offline)))
        except (errors.EntryNotFoundError, errors.LocalEntryNotFoundError) as exc:
            if need_all:
                raise WeightsUnavailableError(f"{where}: the weights shard {filename} is missing ({exc})") from exc
            continue
        except hub_errors as exc:
            raise WeightsUnavailableError(f"{where}: could not download {filename} ({exc})") from exc
        if not need_all:
            break
    if not got:
        state = "in the cache (HF_HUB_OFFLINE is set)" if offline else "in the repository"
        raise WeightsUnavailableError(f"{where}: none of {', '.join(candidates)} is {state}")
    path = got[0] if layout == "open_clip" else folder
    return HubWeights(path, repo, commit, layout)
