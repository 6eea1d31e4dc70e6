"""VPT-deep: prompt tokens in the vision tower only; the text side is a fixed template."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .ivlp import IVLP, IVLPConfig
from .ivlp import OFFICIAL_NAMES as OFFICIAL_NAMES  # same official parameter names


@dataclasses.dataclass
class VPTConfig(IVLPConfig):
    n_ctx_text: int = 0
    n_ctx_vision: int = 8
    depth_text: int = 0
    depth_vision: int = 12
    towers: ClassVar[tuple[str, ...]] = ("vision",)
    label: ClassVar[str] = "VPT"


class VPT(IVLP):
    method = "vpt"
    config: VPTConfig
