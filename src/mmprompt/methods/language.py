"""Deep language prompting: the text half of IVLP (prompt tokens in the text tower only)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .ivlp import IVLP, IVLPConfig
from .ivlp import OFFICIAL_NAMES as OFFICIAL_NAMES  # same official parameter names


@dataclasses.dataclass
class LanguageOnlyConfig(IVLPConfig):
    n_ctx_text: int = 4
    n_ctx_vision: int = 0
    depth_text: int = 12
    depth_vision: int = 0
    towers: ClassVar[tuple[str, ...]] = ("text",)
    label: ClassVar[str] = "language-only prompting"


class LanguageOnly(IVLP):
    method = "language_only"
    config: LanguageOnlyConfig
