"""Import checkpoints of the official implementation (Dassl ``model.pth.tar-<epoch>`` files, or a method's own
format through its table row's ``official_reader``)."""

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
from .methods import (
    DatasetContext,
    Teacher,
    canonical_method,
    convert_official_state_dict,
    create_learner,
    get_method,
    make_config,
)

logger = logging.getLogger(__name__)

_FILE = re.compile(r"model\.pth\.tar-(\d+)$")


def find_official_checkpoint(directory: str | Path, method: str, epoch: int | None = None, best: bool = False) -> Path:
    """The Dassl checkpoint file in ``directory`` (highest epoch unless ``epoch`` is given; ``best``: the
    ``model-best.pth.tar`` a ``TEST.FINAL_MODEL best_val`` run keeps, e.g. PromptKD's, also used when there is
    no numbered file)."""
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
    bests = [directory / sub / "model-best.pth.tar" for sub in folders]
    bests = [b for b in bests if b.is_file()]
    if bests and epoch is None and (best or not candidates):
        return bests[0]
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
    best: bool = False,
    teacher_arch: str | CLIPConfig = "ViT-L/14",
) -> Path:
    """Convert an official checkpoint into an mmprompt prompt checkpoint at ``output``.

    The frozen CLIP and the class-dependent ``token_prefix``/``token_suffix`` buffers are dropped.
    Options that cannot be read from the tensors (e.g. ``ctx_init``) come from ``config``, defaulting
    to the method's (the official yaml's) defaults; the shapes fix ``n_ctx`` and depths.
    """
    method = canonical_method(method)
    spec = get_method(method)
    values = dict(config or {})
    if spec.official_reader is not None:  # not a Dassl code base: the method reads its own format
        path = Path(directory)
        if not path.exists():
            raise FileNotFoundError(f"official checkpoint not found: {path}")
        state, fixed = spec.official_reader(path, clip_config)
        clash = {k: (values[k], v) for k, v in fixed.items() if k in values and values[k] != v}
        if clash:
            raise ValueError(f"{path}: the checkpoint fixes {clash} (given, in file); drop those --set options")
        values.update(fixed)
    else:
        path = find_official_checkpoint(directory, method, epoch, best)
        state = convert_official_state_dict(method, read_official_state(path, method))
    if not state:
        raise ValueError(f"{path}: no {method} prompt parameters found in the state dict")
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
    # the adapters of a method that reads class descriptions do not depend on them: build with placeholders,
    # saved with none (the user gives real descriptions to evaluate)
    placeholder = DatasetContext(descriptions={n: [n] for n in names or ["object"]}) \
        if spec.learner.needs_descriptions(cfg) else None
    teacher = _shape_teacher(spec.learner, cfg, teacher_arch) if spec.learner.needs_teacher else None
    learner = create_learner(method, clip, names or ["object"], cfg, dataset=placeholder, teacher=teacher)
    own = {n: tuple(p.shape) for n, p in learner.prompt_state_dict().items()}
    wrong = [n for n in own if n in state and tuple(state[n].shape) != own[n]]
    if wrong:
        raise _arch_mismatch(path, method, cfg, names, state, own, wrong)
    learner.load_prompt_state_dict(state)
    if placeholder is not None:
        learner.dataset = DatasetContext()
    if not names:
        learner.classnames = []
    info = {"imported_from": str(path), **dict(clip_info or {})}
    logger.info("imported %s (%d tensors) from %s", method, len(state), path)
    extra = {"teacher_arch": str(teacher_arch) if isinstance(teacher_arch, str) else "(config)"} \
        if teacher is not None else None  # the teacher itself: --teacher at use
    return save_prompts(learner, output, clip_info=info, extra=extra)


def _shape_teacher(learner: Any, config: Any, arch: str | CLIPConfig) -> Teacher:
    """The official teacher design of a distilling method on a weightless (meta-device) ``arch`` CLIP: enough to
    build the student's shapes; evaluation and prediction load the real teacher (``--teacher``)."""
    from .clip.config import get_config

    method, options = learner.official_teacher(config)
    with torch.device("meta"):
        clip = CLIP(get_config(arch) if isinstance(arch, str) else arch)
    return Teacher(create_learner(method, clip, ["object"], options), {"source": f"(shape only: {arch})"})


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
