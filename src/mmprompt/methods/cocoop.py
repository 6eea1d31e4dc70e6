"""CoCoOp: context vectors shifted per image by a small meta-network (Zhou et al., CVPR 2022)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, PromptLearner, normal_init


@dataclasses.dataclass
class CoCoOpConfig(MethodConfig):
    n_ctx: int = 4
    """Context vectors; with an init text, the number of its words instead."""
    ctx_init: str = "a photo of a"
    image_chunk_size: int = 8
    """Images whose class prompts are encoded together (memory: image_chunk_size x classes prompts)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ctx_init:
            self.n_ctx = len(self.ctx_init.replace("_", " ").split(" "))
        if self.n_ctx < 1:
            raise ValueError(f"cocoop.n_ctx must be >= 1, got {self.n_ctx}")
        if self.image_chunk_size < 1:
            raise ValueError(f"cocoop.image_chunk_size must be >= 1, got {self.image_chunk_size}")


class CoCoOp(PromptLearner):
    method = "cocoop"
    image_conditioned_text = True
    config: CoCoOpConfig

    @classmethod
    def options_from_state(cls, state):  # noqa: ANN001, ANN206 - see PromptLearner
        return {"n_ctx": state["trainable.ctx"].shape[-2]}

    def build_prompts(self) -> None:
        cfg = self.config
        width, embed = self.clip.config.text.width, self.clip.config.embed_dim
        if cfg.ctx_init:
            self.prefix_text = cfg.ctx_init.replace("_", " ")
            self.trainable.ctx = nn.Parameter(self.init_words(self.prefix_text, cfg.n_ctx))
        else:
            self.prefix_text = " ".join(["X"] * cfg.n_ctx)
            self.trainable.ctx = normal_init(cfg.n_ctx, width)
        hidden = max(1, embed // 16)
        self.trainable.meta_net = nn.Sequential(
            OrderedDict(
                [("linear1", nn.Linear(embed, hidden)), ("relu", nn.ReLU()), ("linear2", nn.Linear(hidden, width))]
            )
        )

    def prepare_classes(self, classnames: list[str]) -> None:
        tokens, embeddings = self.embed_prompts(self.prefix_text, classnames)
        n = self.config.n_ctx
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_prefix", embeddings[:, : self.clip.prompt_start], persistent=False)
        self.register_buffer("token_suffix", embeddings[:, self.clip.prompt_start + n :], persistent=False)

    def logits(self, images: Tensor) -> Tensor:
        img = F.normalize(self.clip.encode_image(images).float(), dim=-1)  # [B, E]
        shifted = self.trainable.ctx.unsqueeze(0) + self.trainable.meta_net(img).unsqueeze(1)  # [B, n, w]
        c = self.token_prefix.shape[0]
        logits = []
        for start in range(0, img.shape[0], self.config.image_chunk_size):
            ctx = shifted[start : start + self.config.image_chunk_size]  # [b, n, w]
            b = ctx.shape[0]
            x = torch.cat(
                [
                    self.token_prefix.unsqueeze(0).expand(b, -1, -1, -1),
                    ctx.unsqueeze(1).expand(-1, c, -1, -1),
                    self.token_suffix.unsqueeze(0).expand(b, -1, -1, -1),
                ],
                dim=2,
            ).flatten(0, 1)  # [b*C, L, w]
            txt = self.encode_text(x, self.eot.repeat(b), prefix_groups=b)  # a prefix per image
            txt = F.normalize(txt.float(), dim=-1).view(b, c, -1)
            logits.append(torch.einsum("be,bce->bc", img[start : start + b], txt))
        return self.logit_scale() * torch.cat(logits)

    def text_features(self) -> Tensor:
        raise RuntimeError("CoCoOp's class text features depend on the image; call the learner on images")


OFFICIAL_NAMES = {
    r"prompt_learner\.ctx": "trainable.ctx",
    r"prompt_learner\.meta_net\.(linear1|linear2)\.(weight|bias)": r"trainable.meta_net.\1.\2",
}
