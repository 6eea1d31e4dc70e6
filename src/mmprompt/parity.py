"""Parity with the official implementation: re-run the reference cases and compare every tensor.

A reference is a ``.npz`` with a ``.json`` beside it (format: ``tests/data/README.md`` /
``shared/parity/README.md``). The list of cases and each case's official configuration are read
from the JSON, so files with other configurations are checked the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .clip.config import config_from_state_dict
from .clip.model import CLIP
from .clip.tokenizer import get_tokenizer
from .engine.gradients import backward_objective, finish_gradients
from .methods import (
    DatasetContext,
    EncoderOptions,
    Objective,
    Teacher,
    config_from_official,
    create_learner,
    get_method,
    official_to_ours,
)

logger = logging.getLogger(__name__)

RTOL = 1e-4
LOOSE_RTOL = 1e-3
"""For gradients of loss parts that cancel (``grad_reg``: cosines near 1), which the references hold only loosely."""


@dataclass
class TensorCheck:
    case: str
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""
    rtol: float = RTOL


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
        clip = ["clip"] if "clip/tokens" in self.arrays else []  # some files hold no plain-CLIP outputs
        return [*clip, *self.meta.get("cases", {})]


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
    return TensorCheck(case, name, diff, rel, rel <= rtol, rtol=rtol)


def reference_clip(ref: Reference, prefix: str = "weights/") -> CLIP:
    """The reference's tiny CLIP (stored as float16; computed in float32); ``teacher_weights/``: the teacher's."""
    state = {k[len(prefix):]: torch.from_numpy(v.astype(np.float32)) for k, v in ref.arrays.items()
             if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{ref.path}: no '{prefix}*' arrays")
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


def case_dataset(case: Mapping[str, Any]) -> DatasetContext:
    """The dataset context of a reference case: its ``dataset_name`` or official ``DATASET.NAME`` (flat,
    dotted or nested), with that dataset's own template (none when the case names no dataset or one that
    mmprompt does not know), and the case's class ``descriptions`` when it has them."""
    official = case.get("official_config") or {}
    name = (case.get("dataset_name") or official.get("DATASET.NAME")
            or (official.get("DATASET") or {}).get("NAME"))
    descriptions = case.get("descriptions")
    extra: dict[str, Any] = {"descriptions": descriptions, "descriptions_source": "the case's descriptions"} \
        if descriptions is not None else {}
    if not name:
        return DatasetContext(**extra)
    from .data import resolve_name
    from .data.templates import get_template

    try:
        key = resolve_name(str(name))
    except KeyError:
        if descriptions is None:
            raise
        return DatasetContext(name=str(name), **extra)  # a made-up dataset that only names the descriptions
    return DatasetContext(name=key, template=get_template(key), **extra)


def _compare_named(result: CaseResult, case: str, prefix: str, ours: Mapping[str, torch.Tensor],
                   arrays: Mapping[str, np.ndarray], required: tuple[str, ...] = ()) -> None:
    """Compare every reference array ``<case>/<name>`` whose name the learner also produced; a reference
    array under one of the ``required`` groups (``teacher/``) that the learner did not produce fails."""
    for key, value in ours.items():
        ref_key = f"{case}/{prefix}{key}"
        if ref_key in arrays:
            result.checks.append(compare(case, f"{prefix}{key}", value, arrays[ref_key]))
    for ref_key in arrays:
        name = ref_key[len(case) + 1:]
        if ref_key.startswith(f"{case}/") and name.startswith(required) and name not in ours:
            result.checks.append(TensorCheck(case, name, float("inf"), float("inf"), False,
                                             "the learner does not produce this tensor"))


def _gradients(learner: Any, objective: Objective) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """``p.grad`` after the engine's backward and gradient transform, plus the raw gradients."""
    params = learner.trainable_parameters()
    held: dict[str, list] = {}
    backward_objective(objective, params, 1.0, held)
    raw = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
           for n, p in learner.named_parameters() if p.requires_grad}
    finish_gradients(learner, held)
    return raw, held


def _term_gradients(learner: Any, objective: Objective, case: str,
                    a: Mapping[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """The gradient of each objective term that the reference has a ``grad_<term>/`` group for (and that is
    not a held grad-term), per trainable parameter (zeros where it has none), before the total's backward."""
    wanted = {key[len(case) + 6:].split("/", 1)[0] for key in a if key.startswith(f"{case}/grad_")}
    terms = sorted(t for t in wanted if t in objective.terms and t not in objective.grad_terms
                   and objective.terms[t].requires_grad)
    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for term in terms:
        grads = torch.autograd.grad(objective.terms[term], [p for _, p in named], retain_graph=True,
                                    allow_unused=True)
        out[term] = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(named, grads, strict=True)}
    return out


def check_method_case(
    ref: Reference, model: CLIP, case: str, encoder: EncoderOptions | None = None, **config_overrides: Any
) -> CaseResult:
    """Logits (eval), every loss term, the total loss and every gradient (after the method's gradient
    transform) of one case; teacher/student tensors, per-parameter learning rates and multi-epoch
    training (``gpa/``) where the reference has them."""
    result = CaseResult(case)
    spec = ref.meta["cases"][case]
    method = spec["method"]
    a = ref.arrays
    config = config_from_official(method, spec.get("official_config", {}), spec)
    for key, value in config_overrides.items():
        if hasattr(config, key):
            setattr(config, key, value)
    teacher = (reference_teacher(ref, method, config, encoder) if get_method(method).learner.needs_teacher
               else None)
    learner = create_learner(method, model, ref.meta["classnames"], config, dataset=case_dataset(spec),
                             encoder=encoder, teacher=teacher)
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
    name_map = learner.current_names(name_map)  # a table written with the former ``prompt.*`` names
    _add_buffers(learner, method, case, a, state)
    learner.load_prompt_state_dict(state)  # strict: every trainable tensor must be in the reference
    images = torch.from_numpy(a["images"])
    labels = torch.from_numpy(a["labels"])
    learner.eval()
    with torch.no_grad():
        result.checks.append(compare(case, "logits", learner(images), a[f"{case}/logits"]))
        for path in learner.inference_paths:  # separate inference paths: ``logits_<path>_path`` each
            key = f"{case}/logits_{path}_path"
            if key in a:
                learner.set_inference_path(path)
                result.checks.append(compare(case, f"logits_{path}_path", learner(images), a[key]))
        learner.set_inference_path(None)
        _compare_named(result, case, "", learner.eval_tensors(images), a)
    learner.train()
    learner.zero_grad(set_to_none=True)
    rand = f"{case}/rand/"
    draws = {k[len(rand):]: torch.from_numpy(np.asarray(v)) for k, v in a.items() if k.startswith(rand)}
    if draws:  # the official step's random draws (prompt index, scale, dropout masks)
        learner.inject_draws(draws)
    objective = learner(images, labels)
    result.checks.append(compare(case, "loss", objective.total, a[f"{case}/loss"]))
    terms = {k: v for k, v in a.items() if k.startswith(f"{case}/loss_terms/")}
    for key, value in terms.items():
        term = key.rsplit("/", 1)[1]
        if term in objective.terms:
            result.checks.append(compare(case, f"loss_terms/{term}", objective.terms[term], value))
        else:
            result.checks.append(TensorCheck(case, f"loss_terms/{term}", float("inf"), float("inf"), False,
                                             f"the objective has no term {term!r} (it has {sorted(objective.terms)})"))
    _compare_named(result, case, "", objective.tensors, a, required=("teacher/", "student/"))
    term_grads = _term_gradients(learner, objective, case, a)
    raw, held = _gradients(learner, objective)
    params = [n for n, p in learner.named_parameters() if p.requires_grad]
    zero = set(spec.get("grad_zero", ()))  # mathematically zero: compared with an absolute tolerance
    largest = max((float(np.abs(v).max()) for k, v in a.items() if k.startswith(f"{case}/grad/") and v.size),
                  default=0.0)
    for ours, param in learner.named_parameters():
        if not param.requires_grad:
            continue
        off = name_map[ours]
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        if off in zero:
            got = compare(case, f"grad/{off}", grad, a[f"{case}/grad/{off}"])
            atol = RTOL * largest
            result.checks.append(TensorCheck(case, got.name, got.max_abs, got.max_abs / largest if largest else 0.0,
                                             got.max_abs <= atol, f"zero gradient: |error| <= {atol:.3g}"))
            continue
        result.checks.append(compare(case, f"grad/{off}", grad, a[f"{case}/grad/{off}"]))
        for key in a:  # grad_<term>/: a grad-term's own gradient, or (other names) the total's before transform
            if key.startswith(f"{case}/grad_") and key.endswith(f"/{off}"):
                term = key[len(case) + 6: -len(off) - 1]
                if term in term_grads:  # an objective term's own gradient (parts that cancel: loosely)
                    result.checks.append(compare(case, f"grad_{term}/{off}", term_grads[term][ours], a[key],
                                                 LOOSE_RTOL))
                    continue
                got = held[term][params.index(ours)] if term in held else raw[ours]
                result.checks.append(compare(case, f"grad_{term}/{off}", got, a[key]))
    if f"{case}/step1/logits" in a:
        _check_step(result, case, spec, learner, images, a)
    if "lr_per_param" in spec:
        _check_learning_rates(result, case, spec, learner, name_map)
    if f"{case}/gpa/losses" in a:
        _check_epochs(result, case, spec, learner, images, labels, name_map, a)
    return result


def _check_step(result: CaseResult, case: str, spec: Mapping[str, Any], learner: Any, images: torch.Tensor,
                a: Mapping[str, np.ndarray]) -> None:
    """One step of the case's official optimizer (JSON ``optimizer``: class, lr, betas, eps, weight decay) with
    the gradients just checked, then the evaluation logits (``step1/logits``; code bases with their own loop,
    e.g. CLIP-LoRA's AdamW step)."""
    from .engine.optim import build_optimizer

    opt = spec.get("optimizer")
    if not isinstance(opt, Mapping) or "class" not in opt:
        result.checks.append(TensorCheck(case, "step1/logits", float("inf"), float("inf"), False,
                                         "the case has step1/logits but its JSON names no 'optimizer'"))
        return
    kind = {"AdamW": "adamw", "Adam": "adam", "SGD": "sgd"}.get(str(opt["class"]))
    if kind is None:
        result.checks.append(TensorCheck(case, "step1/logits", float("inf"), float("inf"), False,
                                         f"optimizer {opt['class']!r} is not supported (AdamW, Adam, SGD)"))
        return
    betas = tuple(opt.get("betas", (0.9, 0.999)))
    optimizer = build_optimizer(learner.parameter_groups(), float(opt["lr"]), float(opt.get("momentum", 0.0)),
                                float(opt.get("weight_decay", 0.0)), kind, betas, float(opt.get("eps", 1e-8)))
    optimizer.step()
    learner.eval()
    with torch.no_grad():
        result.checks.append(compare(case, "step1/logits", learner(images), a[f"{case}/step1/logits"]))


def reference_teacher(ref: Reference, method: str, config: Any, encoder: EncoderOptions | None = None) -> Teacher:
    """The frozen teacher of a reference case: the method's official teacher design on the reference's
    ``teacher_weights/`` CLIP, with the official prompt values ``teacher_param/`` (loaded strictly); its text
    encoder runs as ``encoder`` says (every path is checked)."""
    learner_cls = get_method(method).learner
    teacher_method, options = learner_cls.official_teacher(config)
    clip = reference_clip(ref, "teacher_weights/")
    teacher = create_learner(teacher_method, clip, ref.meta["classnames"], options, encoder=encoder)
    state: dict[str, torch.Tensor] = {}
    for key, value in ref.arrays.items():
        if key.startswith("teacher_param/"):
            name = key[len("teacher_param/"):]
            ours = official_to_ours(teacher_method, name)
            if ours is None:
                raise ValueError(f"{ref.path}: teacher parameter {name!r} has no counterpart in {teacher_method}")
            state[ours] = torch.from_numpy(value.astype(np.float32))
    if not state:
        raise ValueError(f"{ref.path}: {method} needs a teacher, but the file has no 'teacher_param/*' arrays")
    teacher.load_prompt_state_dict(state)
    return Teacher(teacher, {"source": f"{ref.path}:teacher_param", "method": teacher_method})


def _add_buffers(learner: Any, method: str, case: str, arrays: Mapping[str, np.ndarray],
                 state: dict[str, torch.Tensor]) -> None:
    """Buffers of trainable modules (BatchNorm running statistics) from ``<case>/buffer/``; those the
    reference does not hold keep the learner's values."""
    prefix = f"{case}/buffer/"
    for key, value in arrays.items():
        if key.startswith(prefix):
            ours = official_to_ours(method, key[len(prefix):])
            if ours is None:
                raise ValueError(f"{case}: official buffer {key[len(prefix):]!r} has no counterpart in {method}")
            ours = next(iter(learner.current_names({ours: None})))  # a table with the former ``prompt.*`` names
            state[ours] = torch.from_numpy(value)
    for name, value in learner.prompt_state_dict().items():
        if name not in dict(learner.named_parameters()):
            state.setdefault(name, value)


def _check_learning_rates(result: CaseResult, case: str, spec: Mapping[str, Any], learner: Any,
                          name_map: Mapping[str, str]) -> None:
    """The optimizer built from the learner's parameter groups gives each parameter the official rate."""
    from .engine.optim import build_optimizer

    official = spec["lr_per_param"]
    base = float((spec.get("official_config") or {}).get("OPTIM", {}).get("LR") or min(official.values()))
    optimizer = build_optimizer(learner.parameter_groups(), base)
    ours = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in learner.named_parameters():
        if param.requires_grad and name_map[name] in official:
            want = float(official[name_map[name]])
            got = float(ours[id(param)])
            result.checks.append(TensorCheck(case, f"lr/{name_map[name]}", abs(got - want), abs(got - want) / want,
                                             abs(got - want) <= RTOL * want))


def _check_epochs(result: CaseResult, case: str, spec: Mapping[str, Any], learner: Any, images: torch.Tensor,
                  labels: torch.Tensor, name_map: Mapping[str, str], a: Mapping[str, np.ndarray]) -> None:
    """Epochs of one step each on the reference batch (constant rate, SGD momentum 0.9, weight decay 5e-4),
    with the learner's end-of-epoch hook: each step's loss, the parameters at the end of every epoch, the
    final parameters and the final eval logits."""
    optim = spec.get("optim") or {}
    epochs, lr = int(optim["MAX_EPOCH"]), float(optim["LR"])
    trained = int(optim.get("trained_epochs", epochs))
    params = learner.trainable_parameters()
    sgd = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    losses = []
    for epoch in range(trained):
        learner.train()
        sgd.zero_grad(set_to_none=True)
        objective = learner(images, labels)
        losses.append(objective.total.detach())
        _gradients(learner, objective)
        sgd.step()
        for name, param in learner.named_parameters():
            key = f"{case}/gpa/epoch{epoch + 1}/{name_map.get(name, name)}"
            if param.requires_grad and key in a:
                result.checks.append(compare(case, key[len(case) + 1:], param, a[key]))
        learner.on_epoch_end(epoch, epochs)
    result.checks.append(compare(case, "gpa/losses", torch.stack(losses), a[f"{case}/gpa/losses"]))
    for name, param in learner.named_parameters():
        key = f"{case}/gpa/final/{name_map.get(name, name)}"
        if param.requires_grad and key in a:
            result.checks.append(compare(case, key[len(case) + 1:], param, a[key]))
    if f"{case}/gpa/logits" in a:
        learner.eval()
        with torch.no_grad():
            result.checks.append(compare(case, "gpa/logits", learner(images), a[f"{case}/gpa/logits"]))


def run_parity(
    path: str | Path, cases: Iterable[str] | None = None, encoder: EncoderOptions | None = None,
    **config_overrides: Any,
) -> list[CaseResult]:
    """Check ``cases`` (default: every case of the file) with the text encoder run as ``encoder`` says.
    Unknown or failing cases are reported, not raised."""
    ref = load_reference(path)
    wanted = list(cases) if cases else ref.cases
    model = reference_clip(ref)
    results = []
    for case in wanted:
        try:
            if case == "clip":
                results.append(check_clip(ref, model))
            elif case in ref.meta.get("cases", {}):
                results.append(check_method_case(ref, model, case, encoder, **config_overrides))
            else:
                results.append(CaseResult(case, error=f"no case {case!r} in {ref.path} (cases: {ref.cases})"))
        except Exception as exc:  # a case that cannot be checked is a failure, reported with its reason
            logger.debug("case %s failed", case, exc_info=True)
            results.append(CaseResult(case, error=f"{type(exc).__name__}: {exc}"))
    return results
