"""Independent vision-language prompting (IVLP): deep prompts in both towers, learned separately.

This module also holds the deep-prompt machinery that VPT-deep (vision only) and deep language
prompting (text only) reuse with one tower switched off.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..clip.model import CLIP, DeepPrompts
from .base import MethodConfig, PromptLearner, check_depth, normal_init


@dataclasses.dataclass
class IVLPConfig(MethodConfig):
    n_ctx_text: int = 2
    """Text prompt tokens per layer (0: the text side is the fixed template)."""
    n_ctx_vision: int = 2
    """Vision prompt tokens per layer (0: the image encoder is plain CLIP)."""
    depth_text: int = 12
    """Text blocks (from the first) that get fresh prompts."""
    depth_vision: int = 12
    """Vision blocks (from the first) that get fresh prompts."""
    ctx_init: str = "a photo of a"
    """Initial text of the text context; used only when n_ctx_text <= 4."""
    fixed_template: str = "a photo of a {}."
    """Text side when n_ctx_text is 0: frozen features of this template."""
    towers: ClassVar[tuple[str, ...]] = ("text", "vision")
    """The towers that may hold prompts (a one-tower variant: the other tower's fields must be 0)."""
    label: ClassVar[str] = "IVLP"
    """The method's name in error messages."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_ctx_text", "n_ctx_vision", "depth_text", "depth_vision"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.towers) == 1:
            (tower,) = self.towers
            other = "vision" if tower == "text" else "text"
            if getattr(self, f"n_ctx_{other}") or getattr(self, f"depth_{other}"):
                raise ValueError(f"{self.label} has prompts in the {tower} tower only: n_ctx_{other} and "
                                 f"depth_{other} must be 0 (use ivlp for both towers)")
            if not getattr(self, f"n_ctx_{tower}"):
                raise ValueError(f"{self.label} needs n_ctx_{tower} >= 1")
        if self.n_ctx_text and not self.depth_text:
            raise ValueError("depth_text must be >= 1 when n_ctx_text > 0")
        if self.n_ctx_vision and not self.depth_vision:
            raise ValueError("depth_vision must be >= 1 when n_ctx_vision > 0")
        if "{}" not in self.fixed_template:
            raise ValueError(f"fixed_template must contain '{{}}', got {self.fixed_template!r}")

    def check_model(self, clip: CLIP) -> None:
        if self.n_ctx_text:
            check_depth("depth_text", self.depth_text, clip.config.text.layers)
        if self.n_ctx_vision:
            check_depth("depth_vision", self.depth_vision, clip.config.vision.layers)


class IVLP(PromptLearner):
    method = "ivlp"
    config: IVLPConfig

    @classmethod
    def options_from_state(cls, state):  # noqa: ANN001, ANN206 - see PromptLearner
        out = {}
        for tower in ("text", "vision"):
            ctx = state.get(f"trainable.{tower}_ctx")
            out[f"n_ctx_{tower}"] = 0 if ctx is None else ctx.shape[0]
            out[f"depth_{tower}"] = 0 if ctx is None else 1 + sum(
                1 for k in state if k.startswith(f"trainable.{tower}_deep."))
        return out

    def build_prompts(self) -> None:
        cfg = self.config
        w_t, w_v = self.clip.config.text.width, self.clip.config.vision.width
        if cfg.n_ctx_text:
            if cfg.ctx_init and cfg.n_ctx_text <= 4:
                self.prefix_text = cfg.ctx_init.replace("_", " ")
                self.trainable.text_ctx = nn.Parameter(self.init_words(self.prefix_text, cfg.n_ctx_text))
            else:
                self.prefix_text = " ".join(["X"] * cfg.n_ctx_text)
                self.trainable.text_ctx = normal_init(cfg.n_ctx_text, w_t)
            self.trainable.text_deep = nn.ParameterList(
                [normal_init(cfg.n_ctx_text, w_t) for _ in range(cfg.depth_text - 1)]
            )
        if cfg.n_ctx_vision:
            self.trainable.vision_ctx = normal_init(cfg.n_ctx_vision, w_v)
            self.trainable.vision_deep = nn.ParameterList(
                [normal_init(cfg.n_ctx_vision, w_v) for _ in range(cfg.depth_vision - 1)]
            )

    def prepare_classes(self, classnames: list[str]) -> None:
        cfg = self.config
        if cfg.n_ctx_text:
            tokens, embeddings = self.embed_prompts(self.prefix_text, classnames)
            self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
            self.register_buffer("token_prefix", embeddings[:, : self.clip.prompt_start], persistent=False)
            self.register_buffer("token_suffix", embeddings[:, self.clip.prompt_start + cfg.n_ctx_text :], persistent=False)
        else:
            tokens = self.tokenize([cfg.fixed_template.format(name) for name in classnames])
            with torch.no_grad():
                self.register_buffer("fixed_text_features", self.clip.encode_text(tokens).float(), persistent=False)

    def text_features(self) -> Tensor:
        if not self.config.n_ctx_text:
            return self.fixed_text_features
        c = self.token_prefix.shape[0]
        ctx = self.trainable.text_ctx.unsqueeze(0).expand(c, -1, -1)
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        return self.encode_text(x, self.eot, deep_prompts=[None, *self.trainable.text_deep])

    def vision_prompts(self) -> tuple[Tensor | None, DeepPrompts | None]:
        if not self.config.n_ctx_vision:
            return None, None
        return self.trainable.vision_ctx, [None, *self.trainable.vision_deep]


OFFICIAL_NAMES = {
    r"prompt_learner\.ctx": "trainable.text_ctx",
    r"image_encoder\.VPT": "trainable.vision_ctx",
    r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow": lambda m: f"trainable.text_deep.{int(m[1]) - 1}",
    r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow": lambda m: f"trainable.vision_deep.{int(m[1]) - 1}",
}
