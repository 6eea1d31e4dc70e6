"""A second plugin method that uses the teacher extension point: CoOp distilled from any frozen mmprompt run.

``needs_teacher = True`` makes mmprompt load the run given with ``--teacher`` (here, any run or prompt
checkpoint on a CLIP of the same embedding width) and pass it to the constructor as ``self.teacher``. The loss
is cross-entropy plus ``kd_weight`` times KL(teacher || student) of the class distributions. Not a research
method: it exercises the contract.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mmprompt.checks import check_number
from mmprompt.methods import MethodSpec, Objective, Teacher, TeacherMismatchError
from mmprompt.methods.coop import OFFICIAL_NAMES, CoOp, CoOpConfig


@dataclasses.dataclass
class DistillConfig(CoOpConfig):
    kd_weight: float = 1.0
    """Weight of the ``kd`` term."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kd_weight = check_number("probe_distill.kd_weight", self.kd_weight, minimum=0)


class ProbeDistill(CoOp):
    method = "probe_distill"
    needs_teacher = True
    config: DistillConfig

    def check_teacher(self, teacher: Teacher) -> None:
        if teacher.embed_dim != self.clip.config.embed_dim:
            raise TeacherMismatchError(f"the {teacher.name} has {teacher.embed_dim}-d features, the probe_distill "
                                       f"student {self.clip.config.embed_dim}-d")

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        logits = self.train_logits(images)
        ce = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            text = self.teacher.text_features(self.classnames).to(logits.device)
            teacher_logits = self.teacher.logit_scale().to(logits.device) * self.teacher.image_features(images) @ text.t()
        kd = F.kl_div(F.log_softmax(logits.float(), 1), F.softmax(teacher_logits.float(), 1), reduction="batchmean")
        return Objective(total=ce + self.config.kd_weight * kd, terms={"ce": ce, "kd": kd}, logits=logits)


SPEC = MethodSpec(
    "probe_distill",
    ProbeDistill,
    DistillConfig,
    presets={"base2novel": Path(__file__).parent / "probe_distill_b2n.yaml"},
    official_names=OFFICIAL_NAMES,
    description="probe_distill: CoOp distilled from a frozen mmprompt run (--teacher)",
)
