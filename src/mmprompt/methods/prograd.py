"""ProGrad: prompt-aligned gradient for prompt tuning (Zhu et al., ICCV 2023; official code
BeierZhu/Prompt-align @ 1b76203, ``trainers/prograd.py`` and Dassl's ``prograd_backward_and_update``).

The model is CoOp; the method is the *update*. Each step computes the cross-entropy ``xe`` on the labels
and ``kl`` = T^2 x the soft cross-entropy from the student's to the frozen zero-shot CLIP's predictions
(ProGrad's one template per dataset, :data:`PROGRAD_TEMPLATES`). Only ``xe`` is descended (the
objective's total); ``kl`` is a grad-term: its gradient ``h`` only steers. Per trainable tensor, when the
``xe`` gradient ``g`` conflicts with it (cos(g, h) < 0), the component of ``g`` along ``h`` is removed,
scaled by ``lam``: ``g - lam * (g . h/|h|) h/|h|``; otherwise ``g`` is kept. Weight decay is added later,
inside SGD, as in the official code. Evaluation is plain CoOp; the teacher is not used.

Which gradients are reduced, and when (the projection sees one large batch's gradients). The engine
back-propagates ``xe`` into ``p.grad`` (summed over the micro-batches of a step, averaged over processes
by DDP at the last micro-batch) and accumulates ``kl``'s gradient apart with ``torch.autograd.grad``
(summed over the micro-batches, kept local, then all-reduced and averaged over processes once, at the
optimizer step). Both are normalised by the global batch and unscaled from fp16 loss scaling before
:meth:`ProGrad.transform_gradients` runs, so the projection is decided and applied once per optimizer
step on the step's accumulated, reduced gradients: with gradient accumulation or several processes it
equals the projection of one batch of the global size (not an average of per-micro-batch projections).

Context init (ProGrad's, not CoOp's): with ``ctx_init`` the init text is the dataset's ProGrad template
without ``" {}."``; of its k *words*, the last k context rows start as the embeddings of its first k
*tokens* and the leading rows are zeros. The prompt text is ``"X ... X {init} {class}."`` (n_ctx - k X's),
so for templates with punctuation (Pets, Flowers, Aircraft: 8 words, 9 tokens; Food101: 7 words,
8 tokens) the last init token(s) stay fixed text after the context, as in the official code. That text
follows the current dataset (the official model is built for the dataset it is evaluated on).

Deliberate differences: the student trains in the run's precision (official: fp16 student, fp32
teacher); the teacher shares the frozen encoders instead of being a second CLIP, and its image features
are the student's (CoOp's image tower has no prompts, so they are the same computation, done once); the
official "middle" class position crashes and is rejected here; class-specific contexts with
``ctx_init`` (silently ignored officially) are rejected. The fast text paths (EOT truncation, shared
prefix, chunking) all apply: the student is CoOp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_bool, check_int, check_number
from .base import MethodConfig
from .contract import Objective
from .coop import OFFICIAL_NAMES as OFFICIAL_NAMES  # the same official parameter name (prompt_learner.ctx)
from .coop import CoOp

PROGRAD_TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "stanford_cars": "a photo of a {}.",
    "sun397": "a photo of a {}.",
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a type of food, a photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}
"""ProGrad's own template per canonical dataset key (teacher prompt and init text); not CoOp's."""
DEFAULT_TEMPLATE = "a photo of a {}."
POSITIONS = ("end", "front")


@dataclasses.dataclass
class ProGradConfig(MethodConfig):
    """ProGrad's options (the official ``TRAINER.COOP`` and ``LOSS`` keys)."""

    n_ctx: int = 16
    """Context vectors (N_CTX); with ``ctx_init`` the init text fills the last of them."""
    ctx_init: bool = True
    """Initialise from the dataset's ProGrad template (CTX_INIT is a boolean in ProGrad); false: N(0, 0.02)."""
    class_specific: bool = False
    """One context per class (CSC); only without ``ctx_init``."""
    class_token_position: str = "end"
    """"end" or "front" ("middle" crashes in the official code)."""
    temperature: float = 1.0
    """LOSS.T: distillation temperature (``kl`` is multiplied by its square)."""
    lam: float = 1.0
    """LOSS.LAMBDA: how much of the conflicting component of the CE gradient is removed."""
    template: str = ""
    """Teacher prompt / init template with ``{}``; empty: the dataset's ProGrad template (datasets without
    one: their own template, else "a photo of a {}.")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_token_position not in POSITIONS:
            raise ValueError(f"prograd.class_token_position must be one of {POSITIONS} (the official 'middle' "
                             f"crashes), got {self.class_token_position!r}")
        check_bool("prograd.ctx_init", self.ctx_init)
        check_bool("prograd.class_specific", self.class_specific)
        check_int("prograd.n_ctx", self.n_ctx, minimum=1)
        if self.ctx_init and self.class_specific:
            raise ValueError("prograd.class_specific needs ctx_init false (with an init text the official code "
                             "ignores CSC and learns one shared context)")
        self.temperature = check_number("prograd.temperature", self.temperature, above=0)
        self.lam = check_number("prograd.lam", self.lam, minimum=0)
        if not isinstance(self.template, str) or (self.template and "{}" not in self.template):
            raise ValueError(f"prograd.template must be empty or contain '{{}}', got {self.template!r}")


_OFFICIAL_KEYS = {"N_CTX": "n_ctx", "CTX_INIT": "ctx_init", "CSC": "class_specific",
                  "CLASS_TOKEN_POSITION": "class_token_position", "T": "temperature", "LAMBDA": "lam"}


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config for official keys (``TRAINER.COOP.N_CTX``... or bare ``N_CTX``; ``LOSS.T``, ``LOSS.LAMBDA``).
    DATASET.NAME is the dataset context, not a method option; PREC is a run option; CSC is dropped when
    CTX_INIT is on (the official code ignores it)."""
    values: dict[str, Any] = {}
    unknown = []
    for key, value in official.items():
        short = key.removeprefix("TRAINER.COOP.").removeprefix("LOSS.")
        if key in ("DATASET.NAME", "PREC", "TRAINER.COOP.PREC"):
            continue
        if short == "NAME":
            if str(value).lower() != "prograd":
                raise ValueError(f"official LOSS.NAME {value!r} is not ProGrad's ('prograd')")
            continue
        if short not in _OFFICIAL_KEYS:
            unknown.append(key)
            continue
        values[_OFFICIAL_KEYS[short]] = value
    if unknown:
        raise ValueError(f"official ProGrad option(s) {sorted(unknown)} are not understood; "
                         f"known: {sorted(_OFFICIAL_KEYS)} (with TRAINER.COOP. or LOSS.), DATASET.NAME, PREC")
    values["ctx_init"] = bool(values.get("ctx_init", True))
    if values["ctx_init"]:
        values["class_specific"] = False
    return values


def project_conflicting(g: Tensor, h: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """ProGrad's update for one tensor: ``g - lam * (g . u) u`` with ``u = h/|h|`` when cos(g, h) < 0,
    else ``g``; returns (gradient, cosine). Flattened, one decision per tensor, no host sync. A zero or
    non-finite ``g`` or ``h`` gives a NaN cosine, hence ``g`` unchanged (as the official comparison)."""
    gf, hf = g.reshape(-1).float(), h.reshape(-1).float()
    unit = hf / hf.norm()
    cos = (gf / gf.norm()) @ unit
    projected = gf - lam * (gf @ unit) * unit
    return torch.where(cos < 0, projected, gf).view_as(g).to(g.dtype), cos


class ProGrad(CoOp):
    method = "prograd"
    config: ProGradConfig  # type: ignore[assignment]

    def __init__(self, clip, classnames, config, tokenizer=None, **context) -> None:  # noqa: ANN001
        self.last_cosines: dict[str, Tensor] = {}
        """cos(g, h) per trainable tensor at the last optimizer step (projected where < 0)."""
        super().__init__(clip, classnames, config, tokenizer, **context)

    @classmethod
    def options_from_state(cls, state):  # noqa: ANN001, ANN206 - see PromptLearner
        values = super().options_from_state(state)
        if values["class_specific"]:
            values["ctx_init"] = False
        return values

    # ----- prompts --------------------------------------------------------------------------------
    def prograd_template(self) -> str:
        """The teacher's template: the config's, else the dataset's ProGrad one (else its own, else the default)."""
        if self.config.template:
            return self.config.template
        name = self.dataset.name
        if name in PROGRAD_TEMPLATES:
            return PROGRAD_TEMPLATES[name]
        return self.dataset.template or DEFAULT_TEMPLATE

    def init_text(self) -> tuple[str, int]:
        """The init text (template without ``" {}."``, ``_`` as spaces) and its number of words."""
        template = self.prograd_template()
        if not template.endswith(" {}."):
            raise ValueError(f"prograd with ctx_init needs a template ending in ' {{}}.' (got {template!r} for "
                             f"dataset {self.dataset.name!r}); set method.template or method.ctx_init=false")
        init = template.replace(" {}.", "").replace("_", " ")
        words = len(init.split(" "))
        if words > self.config.n_ctx:
            raise ValueError(f"prograd.n_ctx ({self.config.n_ctx}) must be at least the {words} words of the "
                             f"init text {init!r}")
        return init, words

    def build_prompts(self) -> None:
        if not self.config.ctx_init:
            super().build_prompts()  # CoOp's N(0, 0.02) context, "X ... X {class}."
            return
        init, words = self.init_text()
        ctx = torch.zeros(self.config.n_ctx, self.clip.config.text.width)
        ctx[self.config.n_ctx - words:] = self.init_words(init, words)  # tokens 1..k, k counted in words
        self.trainable.ctx = nn.Parameter(ctx)

    def prepare_classes(self, classnames: list[str]) -> None:
        if self.config.ctx_init:
            init, words = self.init_text()
            self.prefix_text = " ".join(["X"] * (self.config.n_ctx - words) + [init])
        super().prepare_classes(classnames)

    # ----- objective and update -------------------------------------------------------------------
    def teacher_logits(self, image_features: Tensor) -> Tensor:
        """Zero-shot logits [B, C] from frozen image features (the teacher's text: ProGrad's template)."""
        text = self.teacher_text_features([self.prograd_template()])
        image = F.normalize(image_features.detach().float(), dim=-1)
        return self.logit_scale().detach() * image @ text.t()

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        image = self.image_features(images)  # CoOp: no vision prompts, so also the teacher's image features
        logits = self.logits_from(image, self.text_features())
        xe = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            teacher = self.teacher_logits(image)
        t = self.config.temperature
        soft = -(F.softmax(teacher / t, dim=-1) * F.log_softmax(logits.float() / t, dim=-1)).sum(dim=-1)
        kl = t * t * soft.mean()
        return Objective(
            total=xe,
            terms={"xe": xe, "kl": kl},
            logits=logits,
            grad_terms={"kl": kl},
            tensors={"teacher/text_features": self.teacher_text_features([self.prograd_template()]),
                     "teacher/logits": teacher},
        )

    @torch.no_grad()
    def transform_gradients(self, grad_terms: Mapping[str, list[Tensor | None]]) -> None:
        """Project each ``p.grad`` (the step's ``xe`` gradient) against the step's ``kl`` gradient."""
        kl = grad_terms.get("kl")
        if kl is None:
            return
        named = list(self.named_trainable().items())
        if len(named) != len(kl):
            raise ValueError(f"prograd: {len(kl)} kl gradients for {len(named)} trainable tensors")
        self.last_cosines = {}
        for (name, param), h in zip(named, kl, strict=True):
            if param.grad is None or h is None:
                continue
            param.grad, self.last_cosines[name] = project_conflicting(param.grad, h, self.config.lam)
