"""PromptSRC: self-regulating prompts (Khattak, Wasim et al., ICCV 2023; official code
muzairkhattak/PromptSRC @ bb95c77).

The model is IVLP (independent deep text and vision prompts; the text context is "a photo of a" when
``n_ctx_text`` <= 4, and then the whole init phrase stays in the prompt). Training regularises the
prompted model towards the frozen CLIP:

``loss = ce + text_loss_weight * scl_text_l1 + image_loss_weight * scl_image_l1 + scl_logits_kl``

* ``scl_text_l1``: mean |t - e| over all entries of the normalised prompted class text features t and
  the normalised teacher e, the mean of the frozen CLIP's UNnormalised text features over the 60
  :data:`TEACHER_TEMPLATES` (normalised only after averaging, as the official code does; computed once
  per class list, never saved);
* ``scl_image_l1``: mean |f - z| of the normalised prompted and frozen image features of the same batch;
* ``scl_logits_kl``: KL(teacher || student) of the class distributions, summed over the batch and the
  classes and divided by their product B * n_cls (``scl_logits_kl_sum`` is the raw sum, weight 0).

Gaussian prompt aggregation (GPA): after each epoch e = 1..N the trainable prompts are added to a running
sum with weight N(e; gpa_mean, gpa_std) normalised over the N epochs (:func:`gpa_weights`); after the
last epoch the sum replaces the prompts. The sum is part of the training state, so a resumed run ends
with the same prompts (the official code restarts its epoch counter on resume).

Deliberate differences from the official code: GPA averages only the trainable prompts (the official
code also averages every frozen tensor of the state dict, which changes nothing but rounding); the
teacher text features are computed lazily per class list on the frozen CLIP itself (the official code
encodes them at construction on a second copy of CLIP, also for evaluation-only runs); evaluation never
touches the teachers. Every fast text path (EOT truncation, shared prefix, chunking) applies: the
prompted text is IVLP's, and the teacher text is plain CLIP text (truncation at the EOT is exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_number
from .contract import Objective
from .ivlp import IVLP, IVLPConfig
from .ivlp import OFFICIAL_NAMES as OFFICIAL_NAMES  # the same official parameter names (IVLP's model)
from .templates import IMAGENET_TEMPLATES

TEACHER_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", *(t for t in IMAGENET_TEMPLATES[:60] if t != "a photo of a {}."))
"""PromptSRC's 60 teacher templates: "a photo of a {}." first, then the first 60 of CLIP's 80 without it."""
"""The official ``IMAGENET_TEMPLATES`` (trainers/imagenet_templates.py): the teacher's text ensemble."""

GPA_STATE_PREFIX = "gpa_sum/"
GPA_EPOCHS_KEY = "gpa_epochs"


def gpa_weights(epochs: int, mean: float, std: float) -> Tensor:
    """GPA weights [epochs] (float64): the normal density N(e; mean, std) at e = 1..epochs, normalised to
    sum 1 (computed as a softmax of the log-densities, so that no weight underflows to an all-zero sum)."""
    if epochs < 1:
        raise ValueError(f"GPA needs at least one epoch, got {epochs}")
    if std <= 0:
        raise ValueError(f"gpa_std must be > 0, got {std}")
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    return torch.softmax(-0.5 * ((e - float(mean)) / float(std)) ** 2, dim=0)


@dataclasses.dataclass
class PromptSRCConfig(IVLPConfig):
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    ctx_init: str = "a photo of a"
    text_loss_weight: float = 25.0
    """Weight of ``scl_text_l1`` (official TEXT_LOSS_WEIGHT)."""
    image_loss_weight: float = 10.0
    """Weight of ``scl_image_l1`` (official IMAGE_LOSS_WEIGHT)."""
    gpa_mean: float = 15.0
    """Mean (in 1-based epochs) of the Gaussian prompt aggregation weights (official GPA_MEAN)."""
    gpa_std: float = 1.0
    """Standard deviation of the GPA weights, in epochs (official GPA_STD)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx_text < 1:
            raise ValueError(f"promptsrc.n_ctx_text must be >= 1 (the text prompt is learned), got {self.n_ctx_text}")
        self.text_loss_weight = check_number("promptsrc.text_loss_weight", self.text_loss_weight, minimum=0)
        self.image_loss_weight = check_number("promptsrc.image_loss_weight", self.image_loss_weight, minimum=0)
        self.gpa_mean = check_number("promptsrc.gpa_mean", self.gpa_mean)
        self.gpa_std = check_number("promptsrc.gpa_std", self.gpa_std, above=0)


_OFFICIAL_KEYS = {"N_CTX_TEXT": "n_ctx_text", "N_CTX_VISION": "n_ctx_vision", "PROMPT_DEPTH_TEXT": "depth_text",
                  "PROMPT_DEPTH_VISION": "depth_vision", "CTX_INIT": "ctx_init",
                  "TEXT_LOSS_WEIGHT": "text_loss_weight", "IMAGE_LOSS_WEIGHT": "image_loss_weight",
                  "GPA_MEAN": "gpa_mean", "GPA_STD": "gpa_std"}


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config for the official ``TRAINER.PROMPTSRC`` keys (PREC is a run option; PROMPT_DEPTH_VISION 0
    means no vision prompt at all, whatever N_CTX_VISION says)."""
    unknown = sorted(set(official) - set(_OFFICIAL_KEYS) - {"PREC"})
    if unknown:
        raise ValueError(f"official PromptSRC option(s) {unknown} are not understood; known: "
                         f"{sorted([*_OFFICIAL_KEYS, 'PREC'])}")
    values = {ours: official[key] for key, ours in _OFFICIAL_KEYS.items() if key in official}
    if values.get("depth_vision") == 0:
        values["n_ctx_vision"] = 0
    if "ctx_init" in values:
        values["ctx_init"] = str(values["ctx_init"] or "")
    return values


class PromptSRC(IVLP):
    method = "promptsrc"
    config: PromptSRCConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gpa_sum: dict[str, Tensor] | None = None
        """The GPA running sum of the trainable prompts (None: no epoch has ended yet)."""
        self._gpa_epochs = 0
        """How many epochs the sum holds."""

    def _prompts(self) -> dict[str, Tensor]:
        return dict(self.named_trainable())

    # ----- objective ---------------------------------------------------------------------------------
    def teacher_text(self) -> Tensor:
        """The teacher's class text features [C, E] before normalisation: the mean of the frozen CLIP's raw
        features over :data:`TEACHER_TEMPLATES` (cached per class list). Always computed in float32, also
        inside a mixed-precision step (as the official code does), so the cache does not depend on where it
        was first filled."""
        device = self.clip.token_embedding.weight.device
        with torch.autocast(device.type, enabled=False):
            return self.teacher_text_mean(TEACHER_TEMPLATES, average="raw")

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        cfg = self.config
        text = F.normalize(self.text_features().float(), dim=-1)
        image = F.normalize(self.image_features(images).float(), dim=-1)
        scale = self.logit_scale()
        logits = scale * image @ text.t()
        ce = F.cross_entropy(logits, labels)
        teacher_mean = self.teacher_text()
        teacher_text = F.normalize(teacher_mean, dim=-1)
        teacher_image = self.teacher_image_features(images)
        with torch.no_grad():
            teacher_logits = scale * teacher_image @ teacher_text.t()
        text_l1 = F.l1_loss(text, teacher_text)
        image_l1 = F.l1_loss(image, teacher_image)
        kl_sum = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(teacher_logits, dim=1), reduction="sum",
                          log_target=True)
        kl = kl_sum / logits.numel()
        total = ce + cfg.text_loss_weight * text_l1 + cfg.image_loss_weight * image_l1 + kl
        return Objective(
            total=total,
            terms={"ce": ce, "scl_text_l1": text_l1, "scl_image_l1": image_l1, "scl_logits_kl": kl,
                   "scl_logits_kl_sum": kl_sum.detach()},
            logits=logits,
            tensors={"teacher/text_features": teacher_mean, "teacher/text_features_normalized": teacher_text,
                     "teacher/image_features": teacher_image, "teacher/logits": teacher_logits,
                     "student/text_features": text, "student/image_features": image},
        )

    # ----- Gaussian prompt aggregation ---------------------------------------------------------------
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Add the prompts of 0-based ``epoch`` to the GPA sum; after the last epoch, load the sum."""
        if epoch != 0 and self._gpa_epochs != epoch:
            raise RuntimeError(
                f"promptsrc: the GPA sum holds {self._gpa_epochs} epoch(s), but epoch {epoch + 1} of {epochs} "
                "has ended; the aggregation needs every epoch (was the training state without its GPA sum?)"
            )
        weight = float(gpa_weights(epochs, self.config.gpa_mean, self.config.gpa_std)[epoch])
        previous = self._gpa_sum if epoch else None
        total: dict[str, Tensor] = {}
        with torch.no_grad():
            for name, param in self._prompts().items():
                weighted = param.detach() * weight
                total[name] = weighted if previous is None else previous[name] + weighted
            self._gpa_sum, self._gpa_epochs = total, epoch + 1
            if epoch == epochs - 1:
                for name, param in self._prompts().items():
                    param.copy_(total[name])

    def training_state(self) -> dict[str, Tensor]:
        if self._gpa_sum is None:
            return {}
        return {GPA_EPOCHS_KEY: torch.tensor(self._gpa_epochs),
                **{GPA_STATE_PREFIX + name: value for name, value in self._gpa_sum.items()}}

    def load_training_state(self, state: Mapping[str, Tensor]) -> None:
        if not state:
            self._gpa_sum, self._gpa_epochs = None, 0
            return
        own = self._prompts()
        sums = self.current_names({k[len(GPA_STATE_PREFIX):]: v for k, v in state.items() if k.startswith(GPA_STATE_PREFIX)})
        unknown = sorted(k for k in state if k != GPA_EPOCHS_KEY and not k.startswith(GPA_STATE_PREFIX))
        problems = [f"unknown keys {unknown}"] if unknown else []
        if GPA_EPOCHS_KEY not in state:
            problems.append(f"no {GPA_EPOCHS_KEY!r}")
        if set(sums) != set(own):
            problems.append(f"the GPA sum covers {sorted(sums)}, the prompts are {sorted(own)}")
        problems += [f"{GPA_STATE_PREFIX}{n}: shape {tuple(v.shape)} vs prompt {tuple(own[n].shape)}"
                     for n, v in sums.items() if n in own and v.shape != own[n].shape]
        if problems:
            raise ValueError("promptsrc training state does not match the learner: " + "; ".join(problems))
        device = next(iter(own.values())).device
        self._gpa_sum = {n: v.detach().to(device=device, dtype=own[n].dtype).clone() for n, v in sums.items()}
        self._gpa_epochs = int(state[GPA_EPOCHS_KEY])
