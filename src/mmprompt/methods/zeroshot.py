"""Zero-shot CLIP: hand-written templates, nothing trains."""

from __future__ import annotations

import dataclasses

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


DEFAULT_TEMPLATE = "a photo of a {}."


@dataclasses.dataclass
class ZeroShotConfig(MethodConfig):
    templates: list[str] | None = None
    """Templates whose normalised features are averaged (None: the dataset's own template, or
    "a photo of a {}." for a dataset without one)."""
    ensemble: bool = False
    """Average CoOp's 7 ImageNet templates and ``templates`` (CoOp's ZeroshotCLIP2). With ``templates``
    None the dataset's own template is added, except for ImageNet itself, as CoOp does."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.templates is None:
            return
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
        own = self.config.templates
        if own is None:  # the dataset's own template (CoOp's ensemble leaves it out for ImageNet)
            skip = self.config.ensemble and self.dataset.name == "imagenet"
            own = [] if skip else [self.dataset.template or DEFAULT_TEMPLATE]
        if not self.config.ensemble:
            return list(own)
        return [*IMAGENET_TEMPLATES_SELECT, *(t for t in own if t not in IMAGENET_TEMPLATES_SELECT)]

    def prepare_classes(self, classnames: list[str]) -> None:
        """Nothing to build: the text features are the frozen teacher's (computed once per class list)."""

    def text_features(self) -> Tensor:
        return self.teacher_text_features(self.templates())
