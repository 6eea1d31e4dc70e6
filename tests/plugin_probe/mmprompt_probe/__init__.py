"""A third-party mmprompt method in one file: CoOp plus an L2 anchor that pulls the context towards its
initial value, with a running average of the context over epochs (state resumed exactly) and a head
learning-rate multiplier. It exercises the method contract's extension points; it is not a research method.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mmprompt.checks import check_bool, check_number
from mmprompt.methods import MethodSpec, Objective, ParameterGroup
from mmprompt.methods.coop import OFFICIAL_NAMES, CoOp, CoOpConfig


@dataclasses.dataclass
class ProbeConfig(CoOpConfig):
    anchor_weight: float = 0.5
    """Weight of the ``anchor`` term: squared distance of the context to its initial value (batch-independent)."""
    average_prompts: bool = False
    """Keep a running mean of the context over epochs and load it after the last epoch."""
    ctx_lr_mult: float = 1.0
    """Learning-rate multiplier of the context (the only parameter group)."""
    ctx_weight_decay: float | None = None
    """Weight decay of the context (None: ``optim.weight_decay``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.anchor_weight = check_number("probe.anchor_weight", self.anchor_weight, minimum=0)
        check_bool("probe.average_prompts", self.average_prompts)
        self.ctx_lr_mult = check_number("probe.ctx_lr_mult", self.ctx_lr_mult, above=0)
        if self.ctx_weight_decay is not None:
            self.ctx_weight_decay = check_number("probe.ctx_weight_decay", self.ctx_weight_decay, minimum=0)


class Probe(CoOp):
    method = "probe"
    config: ProbeConfig

    def build_prompts(self) -> None:
        super().build_prompts()
        self.register_buffer("ctx_init_value", self.trainable.ctx.detach().clone(), persistent=False)
        self._average: Tensor | None = None
        self._epochs_seen = 0

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        logits = self.train_logits(images)
        ce = F.cross_entropy(logits.float(), labels)
        anchor = (self.trainable.ctx - self.ctx_init_value).pow(2).sum()
        return Objective(total=ce + self.config.anchor_weight * anchor, terms={"ce": ce, "anchor": anchor},
                         logits=logits)

    def parameter_groups(self) -> list[ParameterGroup]:
        if self.config.ctx_weight_decay is None:
            return [([self.trainable.ctx], self.config.ctx_lr_mult)]
        return [([self.trainable.ctx], self.config.ctx_lr_mult, self.config.ctx_weight_decay)]

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        if not self.config.average_prompts:
            return
        ctx = self.trainable.ctx.detach()
        self._epochs_seen += 1
        self._average = ctx.clone() if self._average is None else self._average + (ctx - self._average) / self._epochs_seen
        if epoch + 1 == epochs:
            with torch.no_grad():
                self.trainable.ctx.copy_(self._average)

    def training_state(self) -> dict[str, Tensor]:
        if self._average is None:
            return {}
        return {"average": self._average.clone(), "epochs_seen": torch.tensor(self._epochs_seen)}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        self._average = state["average"].clone() if "average" in state else None
        self._epochs_seen = int(state.get("epochs_seen", 0))


SPEC = MethodSpec(
    "probe",
    Probe,
    ProbeConfig,
    presets={"base2novel": Path(__file__).parent / "probe_b2n.yaml"},
    official_names=OFFICIAL_NAMES,
    demo_overrides=(),
    description="example plugin: CoOp + L2 anchor",
)
