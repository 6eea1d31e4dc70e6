"""The teacher of a distilling method: loaded by the engine, handed to the learner, never saved with it.

A learner class with ``needs_teacher`` (PromptKD) gets a :class:`~mmprompt.methods.Teacher` at
construction. :func:`load_teacher` builds it from ``teacher.path`` (``--teacher``):

* an mmprompt run folder or prompt checkpoint (``prompts.json`` + ``prompts.safetensors``): its method,
  config and class names, and the CLIP it records (checked by SHA-256), e.g. PromptSRC trained with mmprompt
  on ViT-L/14;
* an official teacher checkpoint (a Dassl ``model-best.pth.tar`` / ``model.pth.tar-N`` file, or the run
  folder holding ``VLPromptLearner/``): the method's official teacher design
  (:meth:`~mmprompt.methods.PromptLearner.official_teacher`) on ``teacher.clip``, loaded strictly through the
  method table's official names (the official code's non-strict load would keep a missing prompt random).

The teacher is frozen and put on the student's device and dtype. Its identity (:func:`teacher_record`:
source, method, CLIP, SHA-256 of the teacher's weights file) goes into the student's ``prompts.json`` and
training state; a resume or an evaluation with another teacher file is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..clip.model import CLIP
from ..config import ConfigError
from ..errors import CheckpointError
from ..methods import MethodConfig, Teacher, get_method

__all__ = ["load_teacher", "require_teacher", "teacher_for", "teacher_for_checkpoint", "teacher_record"]

logger = logging.getLogger(__name__)

RECORD_KEY = "teacher"
"""Where the teacher's identity is kept in a student's ``prompts.json`` (``extra``) and training state."""


def require_teacher(cfg: Any) -> None:
    """One clear error when ``cfg``'s method needs a teacher and none is given."""
    learner = get_method(cfg.method.name).learner
    if learner.needs_teacher and not cfg.teacher.path:
        raise ConfigError(
            f"{cfg.method.name} distils from a frozen teacher: pass --teacher RUN_DIR_OR_CKPT (an mmprompt run of "
            "e.g. promptsrc on a larger CLIP, or an official teacher checkpoint), or set teacher.path")


def teacher_record(teacher: Teacher | None) -> dict[str, Any] | None:
    """What a student's checkpoint records about its teacher (None: no teacher)."""
    if teacher is None:
        return None
    return {k: teacher.info.get(k) for k in ("source", "kind", "method", "clip", "sha256")}


def _sha256(path: Path) -> str:
    from ..clip.weights import sha256_file

    return sha256_file(path)


def _official_file(path: Path) -> Path:
    if path.is_file():
        return path
    for sub in ("VLPromptLearner", "."):
        folder = path / sub
        best = folder / "model-best.pth.tar"
        if best.is_file():
            return best
        numbered = sorted(folder.glob("model.pth.tar-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])
                          if p.name.rsplit("-", 1)[1].isdigit() else -1)
        if numbered:
            return numbered[-1]
    raise CheckpointError(
        f"teacher {path}: neither an mmprompt run or prompt checkpoint (no prompts.json) nor an official teacher "
        "checkpoint (no VLPromptLearner/model-best.pth.tar or model.pth.tar-N)")


def _load_mmprompt(path: Path, device: torch.device) -> tuple[Any, dict[str, Any]]:
    from ..checkpoint import WEIGHTS_FILE, load_prompts, read_prompt_meta
    from .clip_source import load_clip_from_info

    meta = read_prompt_meta(path)
    spec = get_method(meta["method"])
    if spec.learner.needs_teacher:
        raise CheckpointError(f"teacher {path}: a {meta['method']} student cannot be a teacher here (it needs a "
                              "teacher itself); pass the teacher's own run")
    clip = load_clip_from_info(dict(meta.get("clip") or {}), device=device)
    learner = load_prompts(path, clip)
    clip_meta = meta.get("clip") or {}
    info = {"source": str(path), "kind": "mmprompt", "method": meta["method"],
            "clip": clip_meta.get("weights") or clip_meta.get("name"), "sha256": _sha256(path / WEIGHTS_FILE)}
    return learner, info


def _load_official(path: Path, method: str, config: MethodConfig, clip_spec: str, activation: str | None,
                   classnames: list[str], device: torch.device) -> tuple[Any, dict[str, Any]]:
    from ..methods import convert_official_state_dict, create_learner
    from ..official import read_official_state
    from .clip_source import resolve_clip

    file = _official_file(path)
    teacher_method, options = get_method(method).learner.official_teacher(config)
    state = convert_official_state_dict(teacher_method, read_official_state(file, teacher_method))
    if not state:
        raise CheckpointError(f"teacher {file}: no {teacher_method} prompt parameters in its state_dict")
    clip, clip_info = resolve_clip(clip_spec, activation, device)
    learner = create_learner(teacher_method, clip, classnames, options)
    try:
        learner.load_prompt_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"teacher {file} does not fit the {teacher_method} teacher design of {method} on "
                              f"{clip_spec} (teacher.clip): {exc}") from None
    info = {"source": str(file), "kind": "official", "method": teacher_method,
            "clip": clip_info.get("weights") or clip_spec, "sha256": _sha256(file)}
    return learner, info


def load_teacher(
    source: str | Path,
    method: str,
    config: MethodConfig,
    student_clip: CLIP,
    classnames: list[str],
    *,
    teacher_clip: str = "ViT-L/14",
    activation: str | None = None,
    dataset: str | None = None,
    expected: Mapping[str, Any] | None = None,
) -> Teacher:
    """The frozen teacher at ``source`` for ``method`` (with its ``config``), on ``student_clip``'s device
    and dtype. ``expected`` (a :func:`teacher_record`) makes a teacher with another SHA-256 an error."""
    path = Path(str(source).replace("{dataset}", dataset or "")).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(f"teacher {path} does not exist (--teacher / teacher.path)")
    param = next(student_clip.parameters())
    device, dtype = param.device, param.dtype
    if (path / "prompts.json").is_file():
        learner, info = _load_mmprompt(path, device)
    elif path.is_dir() and (path / "config.yaml").is_file() and not (path / "VLPromptLearner").is_dir():
        raise CheckpointError(f"teacher {path} is an unfinished mmprompt run (no prompts.json yet); finish it "
                              "with `mmprompt train ... --resume` first")
    else:
        learner, info = _load_official(path, method, config, teacher_clip, activation, classnames, device)
    if expected and expected.get("sha256") and expected["sha256"] != info["sha256"]:
        raise CheckpointError(
            f"teacher {info['source']} has SHA-256 {info['sha256'][:16]}..., but this run was trained with the "
            f"teacher {expected.get('source')} (SHA-256 {str(expected['sha256'])[:16]}...); pass that teacher with "
            "--teacher")
    teacher = Teacher(learner, info).to(device=device, dtype=dtype)
    logger.info("teacher: %s %s on %s (sha256 %s)", info["kind"], info["method"], info["clip"], info["sha256"][:12])
    return teacher


def teacher_for(cfg: Any, clip: CLIP, classnames: list[str], dataset: str | None = None,
                expected: Mapping[str, Any] | None = None) -> Teacher | None:
    """The teacher of ``cfg``'s method (None when the method needs none); ``teacher.path`` falls back to
    the ``expected`` record's source (the teacher a trained student recorded)."""
    if not get_method(cfg.method.name).learner.needs_teacher:
        return None
    source = cfg.teacher.path or (expected or {}).get("source")
    if not source:
        require_teacher(cfg)
    return load_teacher(source, cfg.method.name, cfg.method_config(), clip, classnames,
                        teacher_clip=cfg.teacher.clip, activation=cfg.teacher.activation,
                        dataset=dataset or cfg.data.dataset, expected=expected)


def teacher_for_checkpoint(
    directory: str | Path,
    clip: CLIP,
    classnames: list[str] | None = None,
    source: str | Path | None = None,
    teacher_clip: str = "ViT-L/14",
) -> Teacher | None:
    """The teacher a student prompt checkpoint needs (None for methods without one): ``source``
    (``--teacher``) or the one the checkpoint records, which must have the recorded SHA-256."""
    from ..checkpoint import read_prompt_meta
    from ..methods import make_config

    meta = read_prompt_meta(directory)
    method = meta["method"]
    if not get_method(method).learner.needs_teacher:
        return None
    record = (meta.get("extra") or {}).get(RECORD_KEY) or {}
    chosen = source or record.get("source")
    if not chosen:
        raise ConfigError(f"{directory} is a {method} student that records no teacher: pass --teacher "
                          "RUN_DIR_OR_CKPT (the teacher it was trained with)")
    dataset = (meta.get("dataset") or {}).get("name")
    return load_teacher(chosen, method, make_config(method, meta["config"]), clip,
                        list(classnames or meta["classnames"] or ["object"]), teacher_clip=teacher_clip,
                        dataset=dataset, expected=record or None)
