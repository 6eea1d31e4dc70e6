"""A second third-party method that uses the weight-space insertion point (``weight_adapters``): the fixed
prompt "a photo of a {}." and a trainable rank-1 update of the value projection of the text tower's last
block. Like the probe, it exercises the contract; it is not a research method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmprompt.checks import check_int
from mmprompt.methods import MethodConfig, MethodSpec, PromptLearner


@dataclasses.dataclass
class ProbeLoRAConfig(MethodConfig):
    rank: int = 1
    """Rank of the value projection's update."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("probe_lora.rank", self.rank, minimum=1)


class ValueUpdate(nn.Module):
    """``x -> x A^T B^T`` with ``delta_weight() = B A`` (a :class:`mmprompt.clip.model.WeightDelta`)."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, width) / width**0.5)
        self.B = nn.Parameter(torch.zeros(width, rank))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))

    def delta_weight(self) -> Tensor:
        return self.B @ self.A


class ProbeLoRA(PromptLearner):
    method = "probe_lora"
    config: ProbeLoRAConfig

    def build_prompts(self) -> None:
        self.prompt.value = ValueUpdate(self.clip.config.text.width, self.config.rank)

    def prepare_classes(self, classnames: list[str]) -> None:
        tokens, embeddings = self.embed_prompts("a photo of a", classnames)
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)

    def text_features(self) -> Tensor:
        return self.encode_text(self.token_embeddings, self.eot)

    def weight_adapters(self):  # noqa: ANN201 - (vision, text) per-block updates
        text = [None] * self.clip.config.text.layers
        text[-1] = {"v": self.prompt.value}
        return None, text


SPEC = MethodSpec(
    "probe_lora",
    ProbeLoRA,
    ProbeLoRAConfig,
    presets={"base2novel": Path(__file__).parent / "probe_lora_b2n.yaml"},
    description="example plugin: a rank-1 update of the last text block's value projection",
)
