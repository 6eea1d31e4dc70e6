"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang, Xu, CVPR 2024; official code
htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec).

The model is CoOp (one shared context of 4 vectors, class token at the end of a dataset-specific
learnable template) plus class-aware tokens: the Textual Knowledge Embedding ``meta_net``
(Linear(d, d/4) -> QuickGELU -> Linear(d/4, 4 w_t)) maps each class's frozen zero-shot text feature
(the dataset's teacher template, :meth:`PromptLearner.teacher_text_features`, computed once per class
list) to 4 token vectors ``P_c``. Before text block ``injection_layer`` (0-based; 8 officially) runs,
positions 1..4 of class ``c``'s prompt are set to ``P_c``. The official block computes
``w P_c + (1 - w) x[1:5]`` with ``w`` hard-coded 1.0: a replacement, with the same values and
gradients, so it is passed as a per-class deep prompt [C, 4, w_t] at that block (the text encoder's
replacement insertion point); a mixing weight other than 1.0 is rejected. The objective is KgCoOp's:
``ce + weight * kg``, ``kg = 1 - mean_c cos(T_c, t0_c)`` with ``weight`` 8.0 (hard-coded officially;
``TRAINER.COOP.W`` has no effect there and is ignored here). Evaluation is the same forward.

Text fast paths: EOT truncation and chunking apply (exact). The shared prefix stops at SOT: the
class-aware tokens differ per class from ``injection_layer`` on, so positions 1..4 (the same context
in every class before that block) cannot be computed once for all blocks; :func:`shared_prefix_length`
finds this from the per-class deep prompt.

New class names: the prompts are ``ctx`` and ``meta_net``, neither tied to a class; for any class list
(and dataset) the teacher features, and with them the class-aware tokens, are recomputed, so a checkpoint
trained on base classes evaluates novel ones (the base-to-novel protocol). The checkpoint does not record
``injection_layer`` in a shape; it comes from the saved config (``import-official``: the default 8).

Deliberate differences from the official code: fp32/amp instead of fp16; the text width follows the
model (the official reshape hard-codes 512); a non-empty ``ctx_init`` of 4 words initialises the context
from those words (officially any truthy CTX_INIT means "a photo of a"); n_ctx other than 4, CSC and
other class-token positions are rejected (the official code misbehaves or crashes on them).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_int
from ..clip.model import CLIP, QuickGELU
from .kgcoop import KgCoOp, KgCoOpConfig

N_CLASS_PROMPTS = 4
"""Class-aware tokens per class (hard-coded officially; they overwrite the 4 context positions)."""
INIT_TEXT = "a photo of a"
DEFAULT_LEARNABLE = "X X X X {}."
DEFAULT_TEACHER = "a photo of a {}."

LEARNABLE_TEMPLATES: dict[str, str] = {
    "oxford_pets": "X X X X {}, a type of pet.",
    "oxford_flowers": "X X X X {}, a type of flower.",
    "fgvc_aircraft": "X X X X {}, a type of aircraft.",
    "dtd": "X X X X {} texture.",
    "eurosat": "X X X X {}.",
    "stanford_cars": "X X X X {}, a type of car",
    "food101": "X X X X {}, a type of food.",
    "sun397": "X X X X {}.",
    "caltech101": "X X X X {}.",
    "ucf101": "a photo of a person doing {}.",
    **{k: "a photo of a {}." for k in ("imagenet", "imagenet_sketch", "imagenetv2", "imagenet_a", "imagenet_r")},
}
"""The official ``CUSTOM_TEMPLATES`` (canonical dataset key -> template): the context replaces the first
4 tokens after SOT (the X words, or "a photo of a")."""

TEACHER_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of an aircraft {}.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of a {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    **{k: "a photo of a {}." for k in ("imagenet", "imagenet_sketch", "imagenetv2", "imagenet_a", "imagenet_r")},
}
"""The official ``CUSTOM_TEMPLATES_ori``: the zero-shot templates of the teacher (TKE input, kg target)."""


@dataclasses.dataclass
class TCPConfig(KgCoOpConfig):
    n_ctx: int = 4
    """Shared context vectors (must be 4: the templates hold 4 placeholder words)."""
    ctx_init: str = ""
    """Empty: N(0, 0.02) init (official default); a 4-word text: its token embeddings."""
    weight: float = 8.0
    """Weight of the KgCoOp term ``kg`` (8.0 hard-coded in the official forward)."""
    injection_layer: int = 8
    """0-based text block before which the class-aware tokens replace the context positions."""
    learnable_template: str = ""
    """The learnable prompt with ``{}`` for the class name ("": the dataset's official template, else
    "X X X X {}."); its first 4 tokens are replaced by the context."""
    teacher_template: str = ""
    """The zero-shot template of the teacher ("": the dataset's official one, else the dataset's own
    template, else "a photo of a {}.")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx != N_CLASS_PROMPTS:
            raise ValueError(f"tcp.n_ctx must be {N_CLASS_PROMPTS} (the class-aware tokens overwrite exactly the "
                             f"{N_CLASS_PROMPTS} context positions), got {self.n_ctx}")
        if self.class_specific:
            raise ValueError("tcp.class_specific must be false (the official code has no class-specific context)")
        check_int("tcp.injection_layer", self.injection_layer, minimum=0)
        for name in ("learnable_template", "teacher_template"):
            value = getattr(self, name)
            if not isinstance(value, str) or (value and value.count("{}") != 1):
                raise ValueError(f"tcp.{name} must be empty or hold '{{}}' once, got {value!r}")

    def check_model(self, clip: CLIP) -> None:
        layers = clip.config.text.layers
        if self.injection_layer >= layers:
            raise ValueError(f"tcp.injection_layer = {self.injection_layer} must be below the model's {layers} "
                             "text layers (0-based block index)")


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config for the official keys (flat ``N_CTX`` or ``TRAINER.COOP.N_CTX``; ``DATASET.*`` and
    ``PREC`` are run options, ``W`` is dead code officially) and a reference case's ``hard_coded``
    block (``injection_layer``, ``kg_weight``, ``n_class_prompts``, ``injection_mix_weight``) and
    templates."""
    known = {"N_CTX", "CTX_INIT", "CSC", "W", "PREC", "CLASS_TOKEN_POSITION"}
    values: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in official.items():
        if key.startswith("DATASET."):
            continue
        short = key
        for prefix in ("TRAINER.COOP.", "TRAINER.COCOOP.", "TRAINER.TCP."):
            short = short.removeprefix(prefix)
        if short not in known:
            raise ValueError(f"official TCP option {key!r} is not understood; known: {sorted(known)}")
        flat[short] = value
    if "N_CTX" in flat:
        values["n_ctx"] = int(flat["N_CTX"])
    if flat.get("CTX_INIT"):
        values.update(ctx_init=INIT_TEXT, n_ctx=N_CLASS_PROMPTS)
    values["class_specific"] = bool(flat.get("CSC", False))
    hard = dict(case.get("hard_coded") or {})
    mix = float(hard.get("injection_mix_weight", 1.0))
    if mix != 1.0:
        raise ValueError(f"injection_mix_weight {mix} is not supported: only the official replacement (1.0)")
    count = int(hard.get("n_class_prompts", N_CLASS_PROMPTS))
    if count != N_CLASS_PROMPTS:
        raise ValueError(f"n_class_prompts {count} is not supported: the official TKE makes {N_CLASS_PROMPTS}")
    if "injection_layer" in hard:
        values["injection_layer"] = int(hard["injection_layer"])
    if "kg_weight" in hard:
        values["weight"] = float(hard["kg_weight"])
    for name in ("learnable_template", "teacher_template"):
        if case.get(name):
            values[name] = str(case[name])
    return values


class TCP(KgCoOp):
    method = "tcp"
    config: TCPConfig

    def build_prompts(self) -> None:
        super().build_prompts()  # the shared context ``ctx``
        d, w_t = self.clip.config.embed_dim, self.clip.config.text.width
        self.trainable.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(d, d // 4)),
            ("relu", QuickGELU()),  # named as officially; it is QuickGELU
            ("linear2", nn.Linear(d // 4, N_CLASS_PROMPTS * w_t)),
        ]))

    def learnable_template(self) -> str:
        """The prompt template whose first 4 tokens the context replaces."""
        return self.config.learnable_template or LEARNABLE_TEMPLATES.get(self.dataset.name or "", DEFAULT_LEARNABLE)

    def teacher_template(self) -> str:
        """The teacher's zero-shot template (official ``CUSTOM_TEMPLATES_ori``)."""
        return (self.config.teacher_template or TEACHER_TEMPLATES.get(self.dataset.name or "")
                or self.dataset.template or DEFAULT_TEACHER)

    def prepare_classes(self, classnames: list[str]) -> None:
        template = self.learnable_template()
        before = template.split("{}")[0].strip()
        if len(self.tokenizer.encode(before)) < self.config.n_ctx:
            raise ValueError(f"the TCP learnable template {template!r} needs {self.config.n_ctx} tokens before the "
                             "class name (they are replaced by the context)")
        tokens = self.tokenize([template.format(name) for name in classnames])
        with torch.no_grad():
            embeddings = self.clip.token_embedding(tokens).float()
        n = self.config.n_ctx
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_prefix", embeddings[:, : self.clip.prompt_start], persistent=False)
        self.register_buffer("token_suffix", embeddings[:, self.clip.prompt_start + n :], persistent=False)
        self.name_lens = [len(self.tokenizer.encode(name)) for name in classnames]

    def teacher_features(self) -> Tensor:
        """Frozen zero-shot text features [C, E] of the teacher template (normalised, once per class list)."""
        return self.teacher_text_features([self.teacher_template()])

    def class_prompts(self) -> Tensor:
        """The class-aware tokens [C, 4, w_t]: ``meta_net`` of each class's teacher feature."""
        teacher = self.teacher_features()
        out = self.trainable.meta_net(teacher.to(self.trainable.meta_net.linear1.weight.dtype))
        return out.reshape(teacher.shape[0], N_CLASS_PROMPTS, -1)

    def text_features(self) -> Tensor:
        deep: list[Tensor | None] = [None] * self.config.injection_layer + [self.class_prompts()]
        return self.encode_text(self.assemble(self.trainable.ctx), self.eot, deep_prompts=deep)

    # objective: KgCoOp's (ce + weight * kg) on these text features, with teacher/ and student/ tensors

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """The class-aware tokens (``debug/class_prompts`` [C, 4, w_t]) of the current classes."""
        return {"debug/class_prompts": self.class_prompts()}


OFFICIAL_NAMES = {
    r"prompt_learner\.ctx": "trainable.ctx",
    r"prompt_learner\.meta_net\.(linear1|linear2)\.(weight|bias)": r"trainable.meta_net.\1.\2",
}
