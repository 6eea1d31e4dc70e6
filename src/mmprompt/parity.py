"""Parity with the official implementation: re-run the reference cases and compare every tensor.

A reference is a ``.npz`` with a ``.json`` beside it (format: ``tests/data/README.md`` /
``shared/parity/README.md``). The list of cases and each case's official configuration are read
from the JSON, so files with other configurations are checked the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .clip.config import config_from_state_dict
from .clip.model import CLIP
from .clip.tokenizer import get_tokenizer
from .methods import config_from_official, create_learner, official_to_ours

logger = logging.getLogger(__name__)

RTOL = 1e-4


@dataclass
class TensorCheck:
    case: str
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


@dataclass
class CaseResult:
    case: str
    checks: list[TensorCheck] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.checks) and all(c.ok for c in self.checks)


@dataclass
class Reference:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    path: Path

    @property
    def cases(self) -> list[str]:
        return ["clip", *self.meta.get("cases", {})]


def load_reference(path: str | Path) -> Reference:
    """Read ``FILE.npz`` and its ``FILE.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"the reference {path} needs its description {meta_path} beside it")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return Reference(json.loads(meta_path.read_text()), arrays, path)


def compare(case: str, name: str, ours: torch.Tensor, ref: np.ndarray, rtol: float = RTOL) -> TensorCheck:
    """Largest absolute error, and relative error = largest absolute error / largest |reference|."""
    expected = torch.from_numpy(np.asarray(ref)).to(torch.float64)
    got = ours.detach().to(torch.float64).cpu()
    if tuple(got.shape) != tuple(expected.shape):
        return TensorCheck(case, name, float("inf"), float("inf"), False,
                           f"shape {tuple(got.shape)} vs reference {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item() if got.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return TensorCheck(case, name, diff, rel, rel <= rtol)


def reference_clip(ref: Reference) -> CLIP:
    """The reference's tiny CLIP (stored as float16; computed in float32)."""
    state = {k[len("weights/"):]: torch.from_numpy(v.astype(np.float32)) for k, v in ref.arrays.items()
             if k.startswith("weights/")}
    if not state:
        raise ValueError(f"{ref.path}: no 'weights/*' arrays")
    model = CLIP(config_from_state_dict(state, activation="quick_gelu"))
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_clip(ref: Reference, model: CLIP) -> CaseResult:
    result = CaseResult("clip")
    a = ref.arrays
    tokens = get_tokenizer()(ref.meta["texts"], context_length=model.config.text.context_length)
    expected_tokens = a["clip/tokens"]
    same = bool(np.array_equal(tokens.numpy(), expected_tokens))
    mismatched = int((tokens.numpy() != expected_tokens).sum())
    result.checks.append(TensorCheck("clip", "tokens", float(mismatched), float(mismatched), same,
                                     "" if same else f"{mismatched} token ids differ"))
    with torch.no_grad():
        images = torch.from_numpy(a["images"])
        result.checks.append(compare("clip", "image_features", model.encode_image(images), a["clip/image_features"]))
        result.checks.append(
            compare("clip", "text_features", model.encode_text(torch.from_numpy(expected_tokens)),
                    a["clip/text_features"])
        )
    return result


def check_method_case(ref: Reference, model: CLIP, case: str, **config_overrides: Any) -> CaseResult:
    """Logits (eval), loss (train) and the gradient of every trainable parameter of one case."""
    result = CaseResult(case)
    spec = ref.meta["cases"][case]
    method = spec["method"]
    a = ref.arrays
    config = config_from_official(method, spec.get("official_config", {}))
    for key, value in config_overrides.items():
        if hasattr(config, key):
            setattr(config, key, value)
    learner = create_learner(method, model, ref.meta["classnames"], config)
    prefix = f"{case}/param/"
    official = {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}
    state: dict[str, torch.Tensor] = {}
    name_map: dict[str, str] = {}
    for off_name, value in official.items():
        ours = official_to_ours(method, off_name)
        if ours is None:
            raise ValueError(f"{case}: official parameter {off_name!r} has no counterpart in {method}")
        state[ours] = torch.from_numpy(value)
        name_map[ours] = off_name
    learner.load_prompt_state_dict(state)  # strict: every trainable tensor must be in the reference
    images = torch.from_numpy(a["images"])
    labels = torch.from_numpy(a["labels"])
    learner.eval()
    with torch.no_grad():
        result.checks.append(compare(case, "logits", learner(images), a[f"{case}/logits"]))
    learner.train()
    learner.zero_grad(set_to_none=True)
    loss = F.cross_entropy(learner(images), labels)
    loss.backward()
    result.checks.append(compare(case, "loss", loss, a[f"{case}/loss"]))
    for ours, param in learner.named_parameters():
        if not param.requires_grad:
            continue
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        result.checks.append(compare(case, f"grad/{name_map[ours]}", grad, a[f"{case}/grad/{name_map[ours]}"]))
    return result


def run_parity(path: str | Path, cases: Iterable[str] | None = None, **config_overrides: Any) -> list[CaseResult]:
    """Check ``cases`` (default: every case of the file). Unknown or failing cases are reported, not raised."""
    ref = load_reference(path)
    wanted = list(cases) if cases else ref.cases
    model = reference_clip(ref)
    results = []
    for case in wanted:
        try:
            if case == "clip":
                results.append(check_clip(ref, model))
            elif case in ref.meta.get("cases", {}):
                results.append(check_method_case(ref, model, case, **config_overrides))
            else:
                results.append(CaseResult(case, error=f"no case {case!r} in {ref.path} (cases: {ref.cases})"))
        except Exception as exc:  # a case that cannot be checked is a failure, reported with its reason
            logger.debug("case %s failed", case, exc_info=True)
            results.append(CaseResult(case, error=f"{type(exc).__name__}: {exc}"))
    return results
