"""Loading the shipped demo CLIP: checksum, strict load, frozen, eval mode."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..clip.config import CLIPConfig
from ..clip.model import CLIP

__all__ = ["DEMO_WEIGHTS", "DemoWeightsError", "demo_clip_info", "demo_weights_path", "load_demo_clip",
           "sha256_of"]

logger = logging.getLogger(__name__)

DEMO_WEIGHTS = "demo_clip.safetensors"
DEMO_INFO = "demo_clip.json"


class DemoWeightsError(RuntimeError):
    """The shipped demo weights are missing or do not match their recorded checksum."""


def _asset(name: str) -> Path:
    return Path(str(importlib.resources.files("mmprompt").joinpath("assets", name)))


def demo_weights_path() -> Path:
    """Where the demo weights are installed (package data)."""
    return _asset(DEMO_WEIGHTS)


def demo_clip_info() -> dict[str, Any]:
    """The demo CLIP's record: config, sha256, training command, seed and pretraining stats."""
    path = _asset(DEMO_INFO)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DemoWeightsError(f"{path} is missing: the package was installed without its assets") from e


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_demo_clip(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> CLIP:
    """The shipped demo CLIP, verified (SHA-256), loaded strictly, frozen and in eval mode."""
    info = demo_clip_info()
    path = demo_weights_path()
    if not path.is_file():
        raise DemoWeightsError(f"{path} is missing: the package was installed without its assets")
    digest = sha256_of(path)
    if digest != info["sha256"]:
        raise DemoWeightsError(
            f"{path} has SHA-256 {digest}, but {DEMO_INFO} records {info['sha256']}: the file is corrupt "
            "or was replaced; reinstall mmprompt or rerun scripts/pretrain_demo_clip.py"
        )
    config = CLIPConfig.from_dict(info["config"])
    model = CLIP(config)
    state = load_file(str(path))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    logger.info("loaded the demo CLIP from %s (sha256 %s...)", path, digest[:12])
    return model
