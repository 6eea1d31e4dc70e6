"""Import checkpoints of the official implementation (Dassl ``model.pth.tar-<epoch>`` files)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import save_prompts
from .clip.config import CLIPConfig
from .clip.model import CLIP
from .methods import canonical_method, convert_official_state_dict, create_learner, get_method, make_config

logger = logging.getLogger(__name__)

_FILE = re.compile(r"model\.pth\.tar-(\d+)$")


def find_official_checkpoint(directory: str | Path, method: str, epoch: int | None = None) -> Path:
    """The Dassl checkpoint file in ``directory`` (highest epoch unless ``epoch`` is given)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"official checkpoint folder not found: {directory}")
    method = canonical_method(method)
    folders = get_method(method).official_folders
    candidates: list[tuple[int, Path]] = []
    for sub in folders:
        for f in (directory / sub).glob("model.pth.tar-*"):
            m = _FILE.search(f.name)
            if m:
                candidates.append((int(m.group(1)), f))
    if epoch is not None:
        candidates = [c for c in candidates if c[0] == epoch]
    if not candidates:
        expected = " or ".join(f"{directory}/{s}/model.pth.tar-<epoch>" for s in folders) or (
            f"nothing: the method table names no official checkpoint folder for {method}")
        found = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())[:10]
        raise FileNotFoundError(
            f"no official {method} checkpoint{'' if epoch is None else f' for epoch {epoch}'}: expected {expected}; "
            f"found {found or 'no files'}"
        )
    return max(candidates)[1]


def read_official_state(path: Path, method: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Dassl checkpoint, with the prompt learner's prefix restored if needed."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a torch checkpoint with weights_only=True ({exc})") from exc
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = list(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{path}: not a Dassl checkpoint (no 'state_dict'; found {keys})")
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    if path.parent.name == "prompt_learner":
        state = {f"prompt_learner.{k}": v for k, v in state.items()}
    return state


def import_official(
    directory: str | Path,
    method: str,
    output: str | Path,
    clip_config: CLIPConfig,
    classnames: Sequence[str] | None = None,
    epoch: int | None = None,
    config: Mapping[str, Any] | None = None,
    clip_info: Mapping[str, Any] | None = None,
) -> Path:
    """Convert an official checkpoint into an mmprompt prompt checkpoint at ``output``.

    The frozen CLIP and the class-dependent ``token_prefix``/``token_suffix`` buffers are dropped.
    Options that cannot be read from the tensors (e.g. ``ctx_init``) come from ``config``, defaulting
    to the method's (the official yaml's) defaults; the shapes fix ``n_ctx`` and depths.
    """
    method = canonical_method(method)
    path = find_official_checkpoint(directory, method, epoch)
    state = convert_official_state_dict(method, read_official_state(path, method))
    if not state:
        raise ValueError(f"{path}: no {method} prompt parameters found in the state dict")
    values = dict(config or {})
    spec = get_method(method)
    values.update({k: v for k, v in spec.learner.options_from_state(state).items() if k not in values})
    cfg = make_config(method, values)
    names = list(classnames or [])
    needed = spec.learner.classes_needed(state, cfg)
    if needed is not None and len(names) != needed:
        raise ValueError(f"these {method} prompts are tied to their {needed} training class names: pass them "
                         f"with --classnames (got {len(names)})")
    with torch.device("meta"):
        clip = CLIP(clip_config)
    clip = clip.to_empty(device="cpu")
    learner = create_learner(method, clip, names or ["object"], cfg)
    own = {n: tuple(p.shape) for n, p in learner.prompt_state_dict().items()}
    wrong = [n for n in own if n in state and tuple(state[n].shape) != own[n]]
    if wrong:
        raise _arch_mismatch(path, method, cfg, names, state, own, wrong)
    learner.load_prompt_state_dict(state)
    if not names:
        learner.classnames = []
    info = {"imported_from": str(path), **dict(clip_info or {})}
    logger.info("imported %s (%d tensors) from %s", method, len(state), path)
    return save_prompts(learner, output, clip_info=info)


def _fitting_architectures(method: str, cfg: Any, names: Sequence[str], state: Mapping[str, torch.Tensor]) -> list[str]:
    """The named (non-test) architectures whose learner has exactly the checkpoint's prompt shapes."""
    from .clip.config import get_config, list_models

    fits = []
    for arch, description in list_models().items():
        if "test" in description.lower():
            continue
        try:
            with torch.device("meta"):
                learner = create_learner(method, CLIP(get_config(arch)), list(names) or ["object"], cfg)
            shapes = {n: tuple(p.shape) for n, p in learner.prompt_state_dict().items()}
        except Exception:  # noqa: BLE001 - an architecture this method cannot be built on is not a fit
            continue
        if shapes and all(n in state and tuple(state[n].shape) == shp for n, shp in shapes.items()):
            fits.append(arch)
    return fits


def _arch_mismatch(path: Path, method: str, cfg: Any, names: Sequence[str], state: Mapping[str, torch.Tensor],
                   own: Mapping[str, tuple[int, ...]], wrong: Sequence[str]) -> Exception:
    """One message for prompts trained on another CLIP: the first differing tensor, and the architectures
    they fit (the command line's ``--arch``)."""
    from .errors import CheckpointError

    first = wrong[0]
    fits = _fitting_architectures(method, cfg, names, state)
    hint = (f"they fit {', '.join(fits)}: pass --arch {fits[0]}" if fits else
            "pass --arch with the CLIP they were trained on (mmprompt.clip.list_models() names them)")
    return CheckpointError(
        f"{path}: the {method} prompts were trained on another CLIP architecture ({len(wrong)} tensors differ, "
        f"e.g. {first}: checkpoint {tuple(state[first].shape)} vs {own[first]}); {hint} "
        "(Python: clip_config=mmprompt.clip.config.get_config(NAME))")
