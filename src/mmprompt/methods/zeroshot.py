"""Zero-shot CLIP: hand-written templates, nothing trains."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MethodConfig, PromptLearner

# The 7 ImageNet templates CoOp selected for its prompt-ensemble baseline.
IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


@dataclasses.dataclass
class ZeroShotConfig(MethodConfig):
    templates: list[str] = dataclasses.field(default_factory=lambda: ["a photo of a {}."])
    """One template (the dataset's), or several whose normalised features are averaged."""
    ensemble: bool = False
    """Average CoOp's 7 ImageNet templates and ``templates`` (CoOp's ZeroshotCLIP2; for ImageNet itself
    the run leaves ``templates`` empty, as CoOp does)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        if not self.templates and not self.ensemble:
            raise ValueError("zeroshot.templates must name at least one template")
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ValueError(f"zeroshot.templates must each contain '{{}}': {bad}")


class ZeroShotCLIP(PromptLearner):
    method = "zeroshot"
    config: ZeroShotConfig

    def templates(self) -> list[str]:
        """The templates whose features are averaged."""
        if not self.config.ensemble:
            return list(self.config.templates)
        return [*IMAGENET_TEMPLATES_SELECT, *(t for t in self.config.templates if t not in IMAGENET_TEMPLATES_SELECT)]

    def prepare_classes(self, classnames: list[str]) -> None:
        total = None
        templates = self.templates()
        with torch.no_grad():
            for template in templates:
                tokens = self.tokenize([template.format(name) for name in classnames])
                feats = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
                total = feats if total is None else total + feats
        assert total is not None
        mean = total / len(templates)
        self.register_buffer("fixed_text_features", F.normalize(mean, dim=-1), persistent=False)

    def text_features(self) -> Tensor:
        return self.fixed_text_features
