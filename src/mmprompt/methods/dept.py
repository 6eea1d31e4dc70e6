"""DePT: decoupled prompt tuning as a wrapper over any prompt learner (Zhang et al., CVPR 2024; official code
Koorye/DePT @ d4ff416, ``trainers/elp_coop.py`` and ``trainers/elp_maple.py``).

DePT leaves a base prompt learner (CoOp, MaPLe, KgCoOp, IVLP, PromptSRC, ... any row of the method table
whose class text features do not depend on the image) exactly as it is and adds a second head over the
*base* (training) classes: a channel-wise affine transform (``FiLM``: ``x * scale + bias``) of the raw image
features ``I`` [B, D] and of the raw class text features ``T`` [C, D], then a linear classifier.

* Training: ``total = (1 - w) * ce_similarity + w * ce_linear + rest``, where ``ce_similarity`` is the base's
  own ``ce`` term (the CE of its scaled-cosine logits), ``rest`` the base objective's other weighted terms
  (KgCoOp's ``kg``, PromptSRC's consistency terms; nothing for CoOp and MaPLe, which gives the official
  formula exactly), and ``ce_linear`` the CE of the linear head over 2B rows ``cat([film_text(T)[y],
  film_img(I)])`` with targets ``cat([y, y])`` (text rows first). With ``head: similarity`` the head's logits
  are ``s * cos(film_img(I), film_text(T))`` over B rows instead.
* Evaluation on the classes the head was built for (the class list at construction, i.e. the training
  classes): ``(1 - w) * L_sim + w * L_head`` (``fusion``), or ``L_head`` alone (``fusion: false``);
  ``L_head = film_img(I) @ W.T + b`` with no normalisation and no logit scale.
* Any other class list: the head's rows are used only when every current class is one of the trained ones
  (the same list: the official base forward; a subset, e.g. ImageNet-A/R of an ImageNet-trained head: its
  rows are selected by name, as the official ``load_model`` slices them). Otherwise (novel classes, or
  "all" classes of a base-to-novel split) the logits are the base learner's own evaluation logits ``L_sim``
  exactly, as the official new-class model (whose head is an Identity) gives.

Deliberate differences from the official code: the official model has no head at all when trained on
"all" classes of a dataset whose name lacks "ImageNet" (it then trains the base learner alone); here the
head always exists for the training classes. The train/eval branch follows which hook runs (``objective``:
training, ``logits``: evaluation) rather than ``prompt_learner.training``; the official trainer uses them the
same way. A prompt checkpoint must be saved while the learner points at its training classes (the engine
does so): the head's class names are the checkpoint's ``classnames``.

DePT is a :class:`~mmprompt.methods.wrapper.LearnerWrapper`: it holds the base learner as a component, built
through the method table with ``base_options`` at ``trainable.base`` (its trainable tensors are
``trainable.base.trainable.*``, the base's own names under that prefix), and adds the FiLM layers at
``trainable.film_img`` / ``trainable.film_text`` and the linear head at ``trainable.head``. The frozen CLIP is
shared, registered once. Text fast paths are the base learner's (it gets the same encoder options), so they
apply wherever they apply to the base. Image-conditioned bases (CoCoOp) are refused: their class text
features are per image, which the head does not model here.

How the base is reused: DePT calls the base's own ``objective`` (training) and ``logits`` /
``predict_logits`` (evaluation) and takes the raw features the base computes on the way through its
``text_features()`` / ``image_features()`` from the wrapper's ``recording()`` (each must run once per call; a
base that computes them otherwise gets a clear error). The head therefore sees exactly the base's features,
with no second encoder pass, and the base's extra terms, teachers, ``grad_terms`` / ``transform_gradients``
(on the base's parameters, which come first), ``on_epoch_end`` and training state work unchanged (the
wrapper's defaults). The base objective must report its similarity cross-entropy as the term ``ce``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_bool, check_number
from ..clip.model import CLIP
from .base import MethodConfig, PromptLearner, clean_classnames
from .contract import Objective
from .learner import ParameterGroup
from .wrapper import LearnerWrapper

logger = logging.getLogger(__name__)

HEADS = ("linear", "similarity")
OFFICIAL_BASES = {"COOP": "coop", "MAPLE": "maple", "KGCOOP": "kgcoop"}
"""Official ``TRAINER.<KEY>`` blocks -> the base method they configure."""


@dataclasses.dataclass
class DePTConfig(MethodConfig):
    base: str = "coop"
    """The wrapped prompt learner (any method of the table whose text does not depend on the image)."""
    base_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The base learner's own options (its config fields)."""
    head: str = "linear"
    """``linear``: FiLM then a linear classifier over the base classes; ``similarity``: scaled cosine of the
    FiLM'd features (official ``LINEAR_PROBE.TYPE``)."""
    weight: float = 0.7
    """w: ``(1 - w) * ce_similarity + w * ce_linear``, and the test-time fusion weight."""
    fusion: bool = True
    """Test-time fusion on the head's classes: ``(1 - w) * L_sim + w * L_head``; false: ``L_head`` alone."""
    film: bool = True
    """Channel-wise affine transforms before the head (official ``FILM.LINEAR_PROBE``); false: identity."""
    lr_multiplier: float = 6.5
    """Learning-rate multiplier of the FiLM layers and the head (official ``OPTIM.LR_EXP``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        from .table import get_method, make_config  # lazy: the table imports this module

        if not isinstance(self.base, str) or not self.base:
            raise ValueError(f"dept.base must be a method name, got {self.base!r}")
        spec = get_method(self.base)  # KeyError names the known methods
        if spec.learner is DePT:
            raise ValueError("dept.base cannot be dept itself")
        if spec.learner.image_conditioned_text:
            raise ValueError(f"dept.base {spec.name!r} is not supported: its class text features depend on the "
                             "image (DePT here needs one text feature per class)")
        self.base = spec.name
        if not isinstance(self.base_options, Mapping):
            raise ValueError(f"dept.base_options must be a mapping of {spec.name} options, got {self.base_options!r}")
        self.base_options = dict(self.base_options)
        try:
            make_config(spec.name, self.base_options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"dept.base_options: {exc}") from None
        if self.head not in HEADS:
            raise ValueError(f"dept.head must be one of {HEADS}, got {self.head!r}")
        self.weight = check_number("dept.weight", self.weight, minimum=0, maximum=1)
        self.lr_multiplier = check_number("dept.lr_multiplier", self.lr_multiplier, above=0)
        check_bool("dept.fusion", self.fusion)
        check_bool("dept.film", self.film)

    def base_config(self) -> MethodConfig:
        """The base learner's validated config."""
        from .table import make_config

        return make_config(self.base, self.base_options)

    def check_model(self, clip: CLIP) -> None:
        self.base_config().check_model(clip)


class FiLM(nn.Module):
    """Channel-wise affine transform ``x * scale + bias`` (scale ones, bias zeros at init)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.bias


class DePT(LearnerWrapper):
    method = "dept"
    config: DePTConfig

    def __init__(self, clip, classnames, config, tokenizer=None, **context) -> None:  # noqa: ANN001
        super().__init__(clip, classnames, config, tokenizer, **context)
        self.head_classnames = list(classnames)
        """The classes the head was built for (the training classes)."""
        self._refresh_head_rows()

    # ----- construction ------------------------------------------------------------------------------
    def inner_method(self) -> tuple[str, MethodConfig]:
        return self.config.base, self.config.base_config()

    def build_wrapper(self) -> None:
        dim = self.clip.config.embed_dim
        if self.config.film:
            self.trainable.film_img = FiLM(dim)
            self.trainable.film_text = FiLM(dim)
        if self.config.head == "linear":
            self.trainable.head = nn.Linear(dim, len(self._wrap_classnames))

    @property
    def base(self) -> PromptLearner:
        """The wrapped learner (:attr:`inner`)."""
        return self.inner

    @property
    def eot(self) -> Tensor | None:
        """The base learner's EOT positions of the class prompts (None when it has none), for benchmarks."""
        eot = getattr(self.base, "eot", None)
        return eot if isinstance(eot, Tensor) else None

    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """The base (MaPLe when its coupling layers are present, else CoOp: the official DePT bases), its
        shape-fixed options, whether FiLM and a linear head exist."""
        from .table import get_method

        inner = cls.inner_state(state)
        base = "maple" if any(k.startswith("trainable.proj.") for k in inner) else "coop"
        return {"base": base, "base_options": get_method(base).learner.options_from_state(inner),
                "film": "trainable.film_img.scale" in state,
                "head": "linear" if "trainable.head.weight" in state else "similarity"}

    @classmethod
    def classes_needed(cls, state: Mapping[str, Tensor], config: MethodConfig) -> int | None:
        """The linear head's rows: it is tied to its training class names."""
        if "trainable.head.weight" in state:
            return int(state["trainable.head.weight"].shape[0])
        from .table import get_method

        assert isinstance(config, DePTConfig)
        return get_method(config.base).learner.classes_needed(cls.inner_state(state), config.base_config())

    def prepare_classes(self, classnames: list[str]) -> None:
        super().prepare_classes(classnames)
        if hasattr(self, "head_classnames"):
            self._refresh_head_rows()

    def _refresh_head_rows(self) -> None:
        """Which head row serves each current class; None when some class is unknown to the head (or a
        subset names a class that the head holds twice, which cannot be resolved by name)."""
        trained = clean_classnames(self.head_classnames)
        current = clean_classnames(self.classnames)
        self._head_rows: list[int] | None = None
        if current == trained:
            self._head_rows = list(range(len(trained)))
            return
        if not set(current) <= set(trained):
            return
        ambiguous = sorted({n for n in current if trained.count(n) > 1})
        if ambiguous:
            logger.warning("DePT head: class name(s) %s occur more than once among its %d classes; using the "
                           "similarity logits only for this class list", ambiguous[:5], len(trained))
            return
        self._head_rows = [trained.index(n) for n in current]

    @property
    def head_active(self) -> bool:
        """True when the current classes are all known to the head (base classes): the fused forward."""
        return self._head_rows is not None

    # ----- the two heads -------------------------------------------------------------------------------
    def _film(self, which: str, x: Tensor) -> Tensor:
        x = x.float()
        return getattr(self.trainable, f"film_{which}")(x) if self.config.film else x

    def _head_eval(self, image: Tensor, text: Tensor) -> Tensor:
        """Head logits [B, C] of the current classes (they must all be known to the head)."""
        assert self._head_rows is not None
        img = self._film("img", image)
        if self.config.head == "similarity":
            return self.logits_from(img, self._film("text", text))
        rows = torch.tensor(self._head_rows, device=img.device)
        head = self.trainable.head
        return F.linear(img, head.weight.index_select(0, rows), head.bias.index_select(0, rows))

    def _fuse(self, similarity: Tensor, head: Tensor) -> Tensor:
        if not self.config.fusion:
            return head
        w = self.config.weight
        return (1.0 - w) * similarity.float() + w * head

    # ----- hooks -----------------------------------------------------------------------------------------
    def _eval(self, images: Tensor, text_features: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
        """The base learner's own evaluation logits, and on the head's classes (head logits, raw text
        features, raw image features)."""
        with self.recording() as seen:
            if text_features is None:
                similarity = self.base.logits(images)
            else:
                similarity = self.base.predict_logits(images, text_features)
        if not self.head_active:
            return similarity, None
        text, image = seen.one("text", text_features), seen.one("image")
        return similarity, (self._head_eval(image, text), text, image)

    def logits(self, images: Tensor) -> Tensor:
        similarity, head = self._eval(images, None)
        return similarity if head is None else self._fuse(similarity, head[0])

    def train_logits(self, images: Tensor) -> Tensor:
        return self.logits(images)

    def predict_logits(self, images: Tensor, text_features: Tensor | None) -> Tensor:
        similarity, head = self._eval(images, text_features)
        return similarity if head is None else self._fuse(similarity, head[0])

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """Each branch of the evaluation forward: ``logits_similarity``, ``logits_linear`` (the head's, on
        the head's classes only), and the raw ``debug/text_features`` / ``debug/image_features``."""
        similarity, head = self._eval(images, None)
        if head is None:
            return {"logits_similarity": similarity}
        return {"logits_similarity": similarity, "logits_linear": head[0],
                "debug/text_features": head[1], "debug/image_features": head[2]}

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        if self._head_rows != list(range(len(self.head_classnames))):
            raise RuntimeError(f"DePT trains on the {len(self.head_classnames)} classes its head was built for; "
                               f"the learner now points at {self.num_classes} other class names")
        with self.recording() as seen:
            inner = self.base.objective(images, labels)
        if "ce" not in inner.terms:
            raise RuntimeError(f"DePT needs the base objective's 'ce' term; {self.config.base} gives "
                               f"{sorted(inner.terms)}")
        text, image = seen.one("text"), seen.one("image")
        ce_sim = inner.terms["ce"]
        img = self._film("img", image)
        if self.config.head == "linear":
            rows = torch.cat([self._film("text", text)[labels], img])
            head = self.trainable.head(rows)
            ce_lin = F.cross_entropy(head, torch.cat([labels, labels]))
            head_img = head[labels.shape[0]:]
        else:
            head_img = self.logits_from(img, self._film("text", text))
            ce_lin = F.cross_entropy(head_img, labels)
        w = self.config.weight
        total = (1.0 - w) * ce_sim + w * ce_lin
        if set(inner.terms) != {"ce"} or inner.total is not ce_sim:
            total = total + (inner.total - ce_sim)  # the base's other weighted terms
        terms = {k: v for k, v in inner.terms.items() if k != "ce"}
        terms.update(ce_similarity=ce_sim, ce_linear=ce_lin)
        logits = None
        if inner.logits is not None:
            logits = self._fuse(inner.logits.detach(), head_img.detach())
        return Objective(total=total, terms=terms, logits=logits, grad_terms=dict(inner.grad_terms),
                         tensors=dict(inner.tensors))

    def parameter_groups(self) -> list[ParameterGroup]:
        """The base learner's groups as it defines them, then the FiLM layers and the head at
        ``lr_multiplier`` (the official staged rate: 0.0035 for prompts, 0.02275 for FiLM and head)."""
        own = self.own_parameters()
        return [*self.base.parameter_groups(), *([(own, self.config.lr_multiplier)] if own else [])]


# ----- the method table's official names and config ------------------------------------------------------
def _prefixed(target: str | Callable[[re.Match[str]], str]) -> str | Callable[[re.Match[str]], str]:
    if callable(target):
        return lambda m: "trainable.base." + target(m)
    return "trainable.base." + target


def official_names() -> dict[str, str | Callable[[re.Match[str]], str]]:
    """Official ``CustomCLIP`` names of DePT on CoOp / KgCoOp / MaPLe (they agree on ``prompt_learner.ctx``)."""
    from . import coop, maple

    names = {pattern: _prefixed(target) for pattern, target in {**coop.OFFICIAL_NAMES, **maple.OFFICIAL_NAMES}.items()}
    names.update({r"film_lp_img\.(scale|bias)": r"trainable.film_img.\1",
                  r"film_lp_text\.(scale|bias)": r"trainable.film_text.\1",
                  r"linear_probe_proj\.(weight|bias)": r"trainable.head.\1"})
    return names


def _block(official: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A nested official block (``"TRAINER.LINEAR_PROBE": {...}``, or dotted flat keys)."""
    out = dict(official.get(key) or {})
    out.update({k[len(key) + 1:]: v for k, v in official.items() if k.startswith(key + ".")})
    return out


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config for an official DePT config: the base from the case's ``base_method`` (or the one
    ``TRAINER.COOP`` / ``TRAINER.MAPLE`` / ``TRAINER.KGCOOP`` block present) and its options from that block,
    read by the base's own row; ``LINEAR_PROBE``, ``FILM`` and ``OPTIM.LR_EXP`` for the head."""
    from .table import config_from_official, get_method

    present = [b for key, b in OFFICIAL_BASES.items() if f"TRAINER.{key}" in official]
    base = case.get("base_method") or (present[0] if len(present) == 1 else None)
    if not base:
        raise ValueError(f"official DePT config: cannot tell the base learner (give the case's 'base_method' or "
                         f"one of {['TRAINER.' + k for k in OFFICIAL_BASES]}); found {sorted(official)}")
    base = get_method(str(base)).name
    key = next((k for k, b in OFFICIAL_BASES.items() if b == base), base.upper())
    base_options = config_from_official(base, _block(official, f"TRAINER.{key}"), case).to_dict()
    probe, film, optim = (_block(official, k) for k in ("TRAINER.LINEAR_PROBE", "TRAINER.FILM", "OPTIM"))
    unknown = sorted(set(probe) - {"TYPE", "WEIGHT", "TEST_TIME_FUSION"}) + sorted(set(film) - {"LINEAR_PROBE"})
    if unknown:
        raise ValueError(f"official DePT option(s) {unknown} are not understood")
    update = official.get("TRAINER.NAMES_TO_UPDATE")
    if update is not None and set(update) != {"prompt_learner", "linear_probe", "film"}:
        raise ValueError(f"official TRAINER.NAMES_TO_UPDATE {update} is not supported (only the default: the "
                         "prompt learner, the FiLM layers and the head train)")
    subsample = str(_block(official, "DATASET").get("SUBSAMPLE_CLASSES", "base"))
    dataset = str(_block(official, "DATASET").get("NAME", ""))
    if subsample != "base" and not (subsample == "all" and "ImageNet" in dataset):
        raise ValueError(f"official DATASET.SUBSAMPLE_CLASSES {subsample!r} on {dataset!r}: the official model has "
                         "no head then; build the learner on its training classes and point it at others instead")
    if optim.get("STAGED_LR", True) and list(optim.get("NEW_LAYERS", ["linear_probe", "film"])) != [
            "linear_probe", "film"]:
        raise ValueError(f"official OPTIM.NEW_LAYERS {optim['NEW_LAYERS']} is not supported")
    if float(optim.get("BASE_LR_MULT", 1.0)) != 1.0:
        raise ValueError(f"official OPTIM.BASE_LR_MULT {optim['BASE_LR_MULT']} is not supported (only 1.0)")
    return {
        "base": base,
        "base_options": base_options,
        "head": str(probe.get("TYPE", "linear")),
        "weight": float(probe.get("WEIGHT", 0.7)),
        "fusion": bool(probe.get("TEST_TIME_FUSION", True)),
        "film": bool(film.get("LINEAR_PROBE", True)),
        "lr_multiplier": float(optim.get("LR_EXP", 6.5)) if optim.get("STAGED_LR", True) else 1.0,
    }


__all__ = ["DePT", "DePTConfig", "FiLM", "from_official", "official_names"]
