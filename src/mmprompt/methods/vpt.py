"""VPT-deep: prompt tokens in the vision tower only; the text side is a fixed template."""

from __future__ import annotations

import dataclasses

from .ivlp import IVLP, IVLPConfig
from .ivlp import OFFICIAL_NAMES as OFFICIAL_NAMES  # same official parameter names


@dataclasses.dataclass
class VPTConfig(IVLPConfig):
    n_ctx_text: int = 0
    n_ctx_vision: int = 8
    depth_text: int = 0
    depth_vision: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx_text or self.depth_text:
            raise ValueError("VPT has no text prompts: n_ctx_text and depth_text must be 0 (use ivlp)")
        if not self.n_ctx_vision:
            raise ValueError("VPT needs n_ctx_vision >= 1")


class VPT(IVLP):
    method = "vpt"
    config: VPTConfig
