"""Deep language prompting: the text half of IVLP (prompt tokens in the text tower only)."""

from __future__ import annotations

import dataclasses

from .ivlp import IVLP, IVLPConfig
from .ivlp import OFFICIAL_NAMES as OFFICIAL_NAMES  # same official parameter names


@dataclasses.dataclass
class LanguageOnlyConfig(IVLPConfig):
    n_ctx_text: int = 4
    n_ctx_vision: int = 0
    depth_text: int = 12
    depth_vision: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx_vision or self.depth_vision:
            raise ValueError("language-only prompting has no vision prompts: n_ctx_vision and depth_vision must be 0")
        if not self.n_ctx_text:
            raise ValueError("language-only prompting needs n_ctx_text >= 1")


class LanguageOnly(IVLP):
    method = "language_only"
    config: LanguageOnlyConfig
