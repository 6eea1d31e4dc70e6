"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023).

Learnable text prompts in the first J blocks of the text encoder; the vision prompts of each of
those blocks are a coupling function (a linear map from text width to vision width) of the text
prompts of the same depth.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from ..clip.model import CLIP, DeepPrompts
from .base import MethodConfig, PromptLearner, check_depth, normal_init


@dataclasses.dataclass
class MaPLeConfig(MethodConfig):
    n_ctx: int = 2
    """Prompt tokens per layer (text and vision)."""
    depth: int = 9
    """J: the number of blocks (from the first) that get fresh prompts."""
    ctx_init: str = "a photo of a"
    """Initial text; used only when n_ctx <= 4 (then the rest of it stays as frozen text)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx < 1:
            raise ValueError(f"maple.n_ctx must be >= 1, got {self.n_ctx}")
        if self.depth < 1:
            raise ValueError(f"maple.depth must be >= 1 (J counts the input layer), got {self.depth}")

    def check_model(self, clip: CLIP) -> None:
        check_depth("maple.depth", self.depth, min(clip.config.text.layers, clip.config.vision.layers))


class MaPLe(PromptLearner):
    method = "maple"
    config: MaPLeConfig

    def build_prompts(self) -> None:
        cfg = self.config
        w_t, w_v = self.clip.config.text.width, self.clip.config.vision.width
        if cfg.ctx_init and cfg.n_ctx <= 4:
            ctx = nn.Parameter(self.init_words(cfg.ctx_init, cfg.n_ctx))
            self.prefix_text = cfg.ctx_init.replace("_", " ")
        else:
            ctx = normal_init(cfg.n_ctx, w_t)
            self.prefix_text = " ".join(["X"] * cfg.n_ctx)
        self.trainable.ctx = ctx  # [n_ctx, w_t]
        self.trainable.proj = nn.Linear(w_t, w_v)  # coupling function of the input layer
        self.trainable.deep_text = nn.ParameterList([normal_init(cfg.n_ctx, w_t) for _ in range(cfg.depth - 1)])
        coupling = nn.Linear(w_t, w_v)  # the deeper couplings start as copies of one fresh layer
        self.trainable.deep_proj = nn.ModuleList([copy.deepcopy(coupling) for _ in range(cfg.depth - 1)])

    @classmethod
    def options_from_state(cls, state):  # noqa: ANN001, ANN206 - see PromptLearner
        return {"n_ctx": state["trainable.ctx"].shape[0],
                "depth": 1 + sum(1 for k in state if k.startswith("trainable.deep_text."))}

    def prepare_classes(self, classnames: list[str]) -> None:
        tokens, embeddings = self.embed_prompts(self.prefix_text, classnames)
        n = self.config.n_ctx
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_prefix", embeddings[:, : self.clip.prompt_start], persistent=False)  # SOT
        self.register_buffer("token_suffix", embeddings[:, self.clip.prompt_start + n :], persistent=False)

    def text_features(self) -> Tensor:
        c = self.token_prefix.shape[0]
        ctx = self.trainable.ctx.unsqueeze(0).expand(c, -1, -1)
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)  # [C, L, w_t]
        deep: list[Tensor | None] = [None, *self.trainable.deep_text]
        return self.encode_text(x, self.eot, deep_prompts=deep)

    def vision_prompts(self) -> tuple[Tensor | None, DeepPrompts | None]:
        first = self.trainable.proj(self.trainable.ctx)  # [n_ctx, w_v]
        deep = [None, *(f(p) for f, p in zip(self.trainable.deep_proj, self.trainable.deep_text))]
        return first, deep


OFFICIAL_NAMES = {
    r"prompt_learner\.ctx": "trainable.ctx",
    r"prompt_learner\.proj\.(weight|bias)": r"trainable.proj.\1",
    r"prompt_learner\.compound_prompts_text\.(\d+)": r"trainable.deep_text.\1",
    r"prompt_learner\.compound_prompt_projections\.(\d+)\.(weight|bias)": r"trainable.deep_proj.\1.\2",
}
