"""Where a run's CLIP comes from: a registry name, a checkpoint path, a model, or a callable.

:func:`resolve_clip` returns the model and a ``clip_info`` dict that is recorded in the prompt checkpoint
so that :class:`mmprompt.Predictor` can load the same weights again (``weights``, ``sha256``,
``activation``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..clip.model import CLIP

__all__ = ["ClipSpec", "load_clip_from_info", "resolve_clip"]

logger = logging.getLogger(__name__)

ClipSpec = str | Path | CLIP | Callable[[], Any]
"""A registry name, an ``hf-hub:ORG/NAME[@REVISION]`` name or a path for :func:`mmprompt.clip.load`,
``"demo"`` (the built-in demo CLIP), a CLIP, or a callable returning a CLIP or ``(CLIP, clip_info)``."""
DEMO = "demo"


def _demo_clip() -> tuple[CLIP, dict[str, Any]]:
    from ..demo import demo_clip_info, load_demo_clip

    return load_demo_clip(), {"weights": DEMO, "source": "package", "sha256": demo_clip_info()["sha256"]}


def _is_hub_name(spec: str) -> bool:
    from ..clip.hub import is_hub_name

    return is_hub_name(spec)


def _file_digest(path: Path) -> str | None:
    from ..clip.weights import sha256_file

    if path.is_file():
        return sha256_file(path)
    return None


def resolve_clip(
    spec: ClipSpec,
    activation: str | None = None,
    device: str | torch.device = "cpu",
    allow_torchscript: bool = False,
    config: str | Path | None = None,
    architecture: str | None = None,
) -> tuple[CLIP, dict[str, Any]]:
    """The frozen CLIP described by ``spec`` on ``device``, and what to record about it.

    ``allow_torchscript`` reads a TorchScript archive that is not a registered OpenAI release (it runs
    code stored in the file: only for files you trust). ``config`` / ``architecture`` describe bare weights
    without their config (see :func:`mmprompt.clip.load`); they are recorded so the prompts load again.
    """
    if (config is not None or architecture is not None) and not isinstance(spec, (str, Path)):
        raise ValueError("a CLIP config or architecture applies to weights given as a path")
    info: dict[str, Any]
    if isinstance(spec, CLIP):
        clip, info = spec, {"weights": None, "source": "model"}
    elif isinstance(spec, str) and spec.lower() == DEMO:
        clip, info = _demo_clip()
    elif callable(spec) and not isinstance(spec, (str, Path)):
        out = spec()
        clip, extra = (out if isinstance(out, tuple) else (out, {}))
        if not isinstance(clip, CLIP):
            raise TypeError(f"the CLIP callable returned {type(clip).__name__}, expected a mmprompt CLIP")
        name = getattr(spec, "__qualname__", None) or type(spec).__name__
        info = {"weights": None, "source": f"callable:{name}", **dict(extra)}
    elif isinstance(spec, str) and _is_hub_name(spec):
        from ..clip import load

        clip = load(spec, device="cpu", activation=activation)
        hub = clip.weights_info.hub
        info = {"weights": hub, "source": "hf-hub", "sha256": _file_digest(clip.weights_info.weights_file)}
    else:
        from ..clip import load
        from ..clip.weights import get_pretrained

        try:
            entry = get_pretrained(str(spec)) if isinstance(spec, str) else None
        except KeyError:
            entry = None
        described = {k: v for k, v in (("config", None if config is None else str(config)),
                                       ("architecture", architecture)) if v is not None}
        clip = load(spec, device="cpu", activation=activation, allow_torchscript=allow_torchscript, **described)
        if entry is not None and not described:
            info = {"weights": entry.name, "source": "registry", "sha256": entry.sha256}
        else:
            path = Path(spec).expanduser().absolute()
            info = {"weights": str(path), "source": "path", "sha256": _file_digest(path)}
            if "config" in described:  # recorded as load() arguments (the info's "config" is the model's)
                info["load_config"] = str(Path(described["config"]).expanduser().absolute())
            if "architecture" in described:
                info["load_architecture"] = described["architecture"]
    info.setdefault("activation", clip.config.activation)
    clip.requires_grad_(False)
    clip = clip.to(device).eval()
    return clip, info


def load_clip_from_info(
    info: dict[str, Any], device: str | torch.device = "cpu", verify: bool = True
) -> CLIP:
    """Load the CLIP a prompt checkpoint records (its ``clip`` entry), checking the file's SHA-256."""
    from ..clip import load

    weights = info.get("weights")
    from ..errors import CheckpointError

    if not weights:
        raise CheckpointError(
            "the checkpoint does not record loadable CLIP weights (it was trained on a model passed in "
            "directly); pass the CLIP yourself (clip=... / --clip)"
        )
    if weights == DEMO and info.get("source") == "package":
        clip, _ = _demo_clip()  # its checksum is verified on load
        return clip.to(device)
    if info.get("source") == "path":
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"the CLIP weights the prompts were trained with are not at {path}; pass --clip")
        expected = info.get("sha256")
        if verify and expected:
            actual = _file_digest(path)
            if actual != expected:
                raise CheckpointError(
                    f"{path} has SHA-256 {actual}, but the prompts were trained with weights whose SHA-256 is "
                    f"{expected}; pass the right weights with --clip"
                )
        described = {k: info[f"load_{k}"] for k in ("config", "architecture") if info.get(f"load_{k}")}
        return load(path, device=device, activation=info.get("activation"), **described)
    return load(str(weights), device=device, activation=info.get("activation"))
