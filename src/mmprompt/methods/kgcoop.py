"""KgCoOp: CoOp whose learned class text features are pulled towards the frozen hand-crafted ones
(Yao, Zhang, Xu, CVPR 2023; official code htyao89/KgCoOp @ c43ccc3).

The model is CoOp with the class token at the end. The training objective adds
``kg = 1 - mean_c cos(t_c, w_c)`` over every class of the current list, where ``t_c`` is the learned
text feature and ``w_c`` the frozen CLIP's feature of the dataset's own CoOp template (one template, no
ensemble), weighted by ``weight`` (W = 8 in every official run). As in the official code, this is half
of the paper's squared distance with the same weight. Evaluation is plain CoOp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..checks import check_number
from .contract import Objective
from .coop import OFFICIAL_NAMES as OFFICIAL_NAMES  # the same official parameter name (prompt_learner.ctx)
from .coop import CoOp, CoOpConfig

INIT_TEXT = "a photo of a"
FALLBACK_TEMPLATE = "a photo of a {}."


@dataclasses.dataclass
class KgCoOpConfig(CoOpConfig):
    n_ctx: int = 4
    ctx_init: str = INIT_TEXT
    weight: float = 8.0
    """W: the weight of the knowledge-guided term ``kg``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_token_position != "end":
            raise ValueError("kgcoop.class_token_position must be 'end' (the official code always puts it there)")
        self.weight = check_number("kgcoop.weight", self.weight, minimum=0)


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config for the official trainer keys: a truthy CTX_INIT always means "a photo of a" with 4
    context vectors (N_CTX and the CTX_INIT text are then ignored); CLASS_TOKEN_POSITION is ignored."""
    known = {"N_CTX", "CTX_INIT", "CSC", "W", "PREC", "CLASS_TOKEN_POSITION"}
    unknown = sorted(set(official) - known)
    if unknown:
        raise ValueError(f"official KgCoOp option(s) {unknown} are not understood; known: {sorted(known)}")
    values: dict[str, Any] = {"class_specific": bool(official.get("CSC", False))}
    if official.get("CTX_INIT"):
        values.update(ctx_init=INIT_TEXT, n_ctx=4)
    else:
        values.update(ctx_init="", n_ctx=int(official.get("N_CTX", 16)))
    if "W" in official:
        values["weight"] = float(official["W"])
    return values


class KgCoOp(CoOp):
    method = "kgcoop"
    config: KgCoOpConfig

    def teacher_template(self) -> str:
        """The dataset's own hand-written template (the official CUSTOM_TEMPLATES)."""
        return self.dataset.template or FALLBACK_TEMPLATE

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        text = self.text_features()
        image = self.image_features(images)
        logits = self.logits_from(image, text)
        ce = F.cross_entropy(logits.float(), labels)
        student = F.normalize(text.float(), dim=-1)
        teacher = self.teacher_text_features([self.teacher_template()])
        kg = 1.0 - (student * teacher).sum(dim=-1).mean()
        return Objective(
            total=ce + self.config.weight * kg,
            terms={"ce": ce, "kg": kg},
            logits=logits,
            tensors={"teacher/text_features": teacher, "student/text_features": student,
                     "student/image_features": F.normalize(image.float(), dim=-1)},
        )
