"""A second plugin method with two inference paths (the extension point MMRL uses): CoOp whose ``seen`` path
(the classes it was trained on) uses the learned context, and whose ``unseen`` path (any other classes or
dataset) averages those logits with the frozen zero-shot CLIP's. Not a research method."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mmprompt.methods import MethodSpec
from mmprompt.methods.coop import OFFICIAL_NAMES, CoOp, CoOpConfig


class TwoPaths(CoOp):
    method = "probe_paths"
    inference_paths = ("seen", "unseen")  # first: the training classes; last: everything else

    def predict_logits(self, images: Tensor, text_features: Tensor | None) -> Tensor:
        text = self.text_features() if text_features is None else text_features
        logits = self.logits_from(self.image_features(images), text)
        if self.inference_path == "seen":
            return logits
        zero_shot = self.teacher_image_features(images) @ self.teacher_text_features(["a photo of a {}."]).t()
        return 0.5 * logits + 0.5 * self.logit_scale() * zero_shot

    def logits(self, images: Tensor) -> Tensor:
        return self.predict_logits(images, None)

    def train_logits(self, images: Tensor) -> Tensor:
        return self.logits_from(self.image_features(images), self.text_features())

SPEC = MethodSpec("probe_paths", TwoPaths, CoOpConfig, presets={"base2novel": Path(__file__).parent / "paths_b2n.yaml"},
                  official_names=OFFICIAL_NAMES, description="example plugin: two inference paths")
