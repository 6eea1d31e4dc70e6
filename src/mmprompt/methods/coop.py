"""CoOp: learnable context vectors for the text prompt (Zhou et al., IJCV 2022)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from .base import MethodConfig, PromptLearner, normal_init

POSITIONS = ("end", "middle", "front")


@dataclasses.dataclass
class CoOpConfig(MethodConfig):
    n_ctx: int = 16
    """Context vectors; with an init text, the number of its words instead."""
    ctx_init: str = ""
    """Initial text (all its words become learnable); empty: N(0, 0.02) init."""
    class_specific: bool = False
    """One context per class (CSC): the prompts are then tied to the training class names."""
    class_token_position: str = "end"
    """Where the class name goes: "end", "middle" or "front"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_token_position not in POSITIONS:
            raise ValueError(f"coop.class_token_position must be one of {POSITIONS}, got {self.class_token_position!r}")
        if self.ctx_init:
            self.n_ctx = len(self.ctx_init.replace("_", " ").split(" "))
        if self.n_ctx < 1:
            raise ValueError(f"coop.n_ctx must be >= 1, got {self.n_ctx}")


class CoOp(PromptLearner):
    method = "coop"
    config: CoOpConfig

    def __init__(self, clip, classnames, config, tokenizer=None, **context) -> None:  # noqa: ANN001
        self._n_cls_at_build = len(classnames)
        self.class_specific = config.class_specific  # type: ignore[misc]
        super().__init__(clip, classnames, config, tokenizer, **context)
        self.trained_classnames = list(classnames)

    @classmethod
    def options_from_state(cls, state):  # noqa: ANN001, ANN206 - see PromptLearner
        ctx = state["trainable.ctx"]
        return {"n_ctx": ctx.shape[-2], "class_specific": ctx.dim() == 3}

    @classmethod
    def classes_needed(cls, state, config):  # noqa: ANN001, ANN206 - see PromptLearner
        return state["trainable.ctx"].shape[0] if config.class_specific else None

    def build_prompts(self) -> None:
        cfg = self.config
        width = self.clip.config.text.width
        if cfg.ctx_init:
            init = cfg.ctx_init.replace("_", " ")
            vectors = self.init_words(init, cfg.n_ctx)
            if cfg.class_specific:
                vectors = vectors.unsqueeze(0).repeat(self._n_cls_at_build, 1, 1)
            self.trainable.ctx = nn.Parameter(vectors)
            self.prefix_text = init
        else:
            shape = (self._n_cls_at_build, cfg.n_ctx, width) if cfg.class_specific else (cfg.n_ctx, width)
            self.trainable.ctx = normal_init(*shape)
            self.prefix_text = " ".join(["X"] * cfg.n_ctx)

    def prepare_classes(self, classnames: list[str]) -> None:
        if self.config.class_specific and hasattr(self, "trained_classnames"):
            if [c.replace("_", " ") for c in self.trained_classnames] != classnames:
                raise ValueError(
                    "class-specific CoOp prompts are tied to the class names they were trained on "
                    f"({len(self.trained_classnames)} classes); they cannot be used with other class names"
                )
        tokens, embeddings = self.embed_prompts(self.prefix_text, classnames)
        n = self.config.n_ctx
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_prefix", embeddings[:, : self.clip.prompt_start], persistent=False)
        self.register_buffer("token_suffix", embeddings[:, self.clip.prompt_start + n :], persistent=False)
        self.name_lens = [len(self.tokenizer.encode(name)) for name in classnames]

    def assemble(self, ctx: Tensor) -> Tensor:
        """Prompt embeddings [C, L, w] with the context ``ctx`` ([n, w] or [C, n, w]) around the class name."""
        prefix, suffix = self.token_prefix, self.token_suffix
        c = prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        position = self.config.class_token_position
        if position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = ctx.shape[1] // 2
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
            if position == "middle":
                parts = [prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest]
            else:  # front
                parts = [prefix[i : i + 1], name, ctx[i : i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def text_features(self) -> Tensor:
        return self.encode_text(self.assemble(self.trainable.ctx), self.eot)


OFFICIAL_NAMES = {r"prompt_learner\.ctx": "trainable.ctx"}
