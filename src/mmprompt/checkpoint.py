"""Prompt checkpoints: the trainable tensors only, never the frozen CLIP.

A checkpoint is a folder with ``prompts.safetensors`` (the tensors) and ``prompts.json`` (the method,
its config, the class names it was trained on, the CLIP weights' name and checksum, and package
versions). Both files are written atomically; the JSON is written last, so a folder with a JSON is
complete.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from . import __version__
from .clip.model import CLIP
from .errors import CheckpointError
from .fileio import atomic_write_bytes, atomic_write_json
from .methods import (
    DatasetContext,
    EncoderOptions,
    PromptLearner,
    Teacher,
    create_learner,
    get_method,
    make_config,
)

FORMAT = "mmprompt-prompts"
FORMAT_VERSION = 1
WEIGHTS_FILE = "prompts.safetensors"
META_FILE = "prompts.json"

logger = logging.getLogger(__name__)


def package_versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {
        "mmprompt": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its JSON header's keys sorted, so equal content gives equal bytes.

    safetensors writes the metadata in hash-map order, which changes between processes. The header keeps
    its length (same keys, same values), so the tensor data and their offsets are unchanged.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(text) > n:  # cannot happen for a header safetensors wrote; keep the file as it is
        return blob
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n :]


def save_prompts(
    learner: PromptLearner,
    directory: str | Path,
    clip_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``learner``'s prompts (and what is needed to rebuild it) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in learner.prompt_state_dict().items()}
    blob = canonical_safetensors(save(tensors, metadata={"format": FORMAT, "method": learner.method}))
    atomic_write_bytes(directory / WEIGHTS_FILE, blob)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": learner.method,
        "config": learner.config.to_dict(),
        "classnames": list(learner.classnames),
        "dataset": {"name": learner.dataset.name, "template": learner.dataset.template,
                    **saved_descriptions(learner)},
        "clip": {"config": learner.clip.config.to_dict(), **dict(clip_info or {})},
        "num_trainable": sum(t.numel() for t in tensors.values()),
        "versions": package_versions(),
        "extra": dict(extra or {}),
    }
    atomic_write_json(directory / META_FILE, meta)
    return directory


def saved_descriptions(learner: PromptLearner) -> dict[str, Any]:
    """``{"descriptions": {class: sentences}}`` for the learner's classes when it reads class descriptions (so
    the checkpoint predicts its own classes without the file), else nothing."""
    given = learner.dataset.descriptions
    if not learner.uses_descriptions or given is None:
        return {}
    from .descriptions import description_key

    wanted = {description_key(c) for c in learner.classnames}
    return {"descriptions": {k: list(v) for k, v in given.items() if description_key(k) in wanted}}


def read_prompt_meta(directory: str | Path) -> dict[str, Any]:
    """The JSON description of a prompt checkpoint, checked for format."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory} is not an mmprompt prompt checkpoint: {META_FILE} is missing "
            "(an interrupted save leaves no JSON; official Dassl checkpoints need `mmprompt import-official`)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    for field in ("format", "method", "config", "classnames"):
        if field not in meta:
            raise CheckpointError(f"{meta_path}: field {field!r} is missing")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{meta_path}: field 'format' is {meta['format']!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {meta['format_version']} is newer than this mmprompt")
    return meta


def read_prompt_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``prompts.safetensors``, checked: a truncated, empty or foreign file (a pickle) and
    tensors holding NaN or Inf are each a :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors reports a bad file with its own error types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason}); it is truncated or was "
                              "not written by mmprompt: save or train the prompts again") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{path}: the tensor(s) {shown} hold NaN or Inf values; these prompts cannot "
                              "predict (train them again, e.g. with a lower optim.lr)")
    return state


def check_method_matches(meta: Mapping[str, Any], method: str | None, where: str | Path) -> None:
    """A ``--method`` given with a checkpoint must be the checkpoint's method (it is never silently ignored)."""
    from .checks import ConfigError
    from .methods import canonical_method

    if method is None:
        return
    try:
        wanted = canonical_method(method)
    except KeyError as exc:
        raise ConfigError(f"--method: {exc.args[0]}") from None
    if wanted != canonical_method(str(meta["method"])):
        raise ConfigError(f"--method {method} disagrees with the checkpoint {where}, which holds {meta['method']} "
                          "prompts: leave out --method (the checkpoint says it) or give a checkpoint of that method")


def warn_if_other_weights(meta: Mapping[str, Any], clip_info: Mapping[str, Any], where: str | Path) -> bool:
    """Log a warning when the CLIP given now (``clip_info`` of :func:`~mmprompt.engine.clip_source.resolve_clip`)
    is not the file the prompts were trained with (their recorded SHA-256 differs); True when it is not."""
    recorded = (meta.get("clip") or {}).get("sha256")
    given = clip_info.get("sha256")
    if not recorded or not given or recorded == given:
        return False
    trained = (meta.get("clip") or {}).get("weights")
    logger.warning("%s: the prompts were trained with CLIP weights %s (SHA-256 %s...), but the weights given now "
                   "(%s) have SHA-256 %s...: the same shapes, other values, so the results will differ from the "
                   "trained run's", where, trained, recorded[:12], clip_info.get("weights"), given[:12])
    return True


def check_clip_matches(meta: Mapping[str, Any], clip: CLIP, where: Path) -> None:
    saved = (meta.get("clip") or {}).get("config")
    if not saved:
        return
    current = clip.config.to_dict()
    diffs = []
    for tower in ("vision", "text"):
        for key in ("width", "layers"):
            if saved.get(tower, {}).get(key) != current[tower][key]:
                diffs.append(f"{tower}.{key}: checkpoint {saved.get(tower, {}).get(key)} vs model {current[tower][key]}")
    if saved.get("embed_dim") != current["embed_dim"]:
        diffs.append(f"embed_dim: checkpoint {saved.get('embed_dim')} vs model {current['embed_dim']}")
    if diffs:
        raise CheckpointError(f"{where}: the prompts were trained on another CLIP architecture ({'; '.join(diffs)})")


def load_prompts(
    directory: str | Path,
    clip: CLIP,
    classnames: Sequence[str] | None = None,
    dataset: DatasetContext | None = None,
    encoder: EncoderOptions | None = None,
    teacher: Teacher | None = None,
) -> PromptLearner:
    """Rebuild the learner saved in ``directory`` on ``clip``, for ``classnames`` (default: the trained ones)
    of ``dataset`` (default: the training dataset); ``teacher``: the frozen teacher of a distilling method.

    Loading is strict: every trained tensor must be present with its shape. Class-specific CoOp prompts
    cannot be used with other class names.
    """
    directory = Path(directory)
    meta = read_prompt_meta(directory)
    check_clip_matches(meta, clip, directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing (the checkpoint folder is incomplete)")
    config = make_config(meta["method"], meta["config"])
    trained = list(meta["classnames"])
    if not trained and classnames is None:
        raise CheckpointError(f"{directory}: the checkpoint records no class names; pass the class names to use")
    saved = meta.get("dataset") or {}
    descriptions = saved.get("descriptions")
    trained_on = DatasetContext(name=saved.get("name"), template=saved.get("template"), descriptions=descriptions,
                                descriptions_source=f"{directory / META_FILE} (the training descriptions)"
                                if descriptions is not None else None)
    names, context = trained or list(classnames or []), trained_on
    if classnames is not None and get_method(meta["method"]).learner.uses_descriptions:
        from .descriptions import keep_descriptions

        dataset = keep_descriptions(dataset or trained_on, trained_on)  # the saved ones unless others are given
        names, context = list(classnames), dataset  # build for the described classes directly
    learner = create_learner(meta["method"], clip, names, config, dataset=context, encoder=encoder,
                             teacher=teacher)
    learner.trained_on = (tuple(trained), trained_on.name)  # no recorded names: no class list counts as trained
    state = read_prompt_tensors(weights)
    try:
        learner.load_prompt_state_dict(state)
    except ValueError as exc:
        if teacher is None:
            raise
        raise CheckpointError(f"{directory}: the student's prompts do not fit the {teacher.name} "
                              f"(embedding width {teacher.embed_dim}): {exc}") from None
    new_names = classnames is not None and list(classnames) != list(learner.classnames)
    if new_names or (dataset is not None and dataset != learner.dataset):
        learner.set_classnames(list(classnames) if classnames is not None else learner.classnames, dataset=dataset)
    return learner
