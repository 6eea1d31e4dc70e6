"""Classify images with trained prompts (or zero-shot CLIP) and class names chosen at prediction time.

>>> from mmprompt import Predictor
>>> p = Predictor.from_checkpoint("runs/maple/eurosat")                  # doctest: +SKIP
>>> p.set_classes(["forest", "river", "highway or road"])               # doctest: +SKIP
>>> p.predict(["image.jpg"], top_k=2)                                    # doctest: +SKIP
[[('forest', 0.91), ('river', 0.06)]]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .clip.model import CLIP
from .methods import PromptLearner

__all__ = ["Predictor", "to_pil"]

logger = logging.getLogger(__name__)

ImageInput = Image.Image | str | Path | np.ndarray | Tensor
"""A file path, a PIL image, a numpy array (H x W or H x W x C; uint8, 16-bit, or float in [0, 1]) or a
tensor (C x H x W, as torchvision; uint8 or float in [0, 1])."""


def to_pil(image: Image.Image | np.ndarray | Tensor) -> Image.Image:
    """An in-memory image as an RGB PIL image (see :data:`ImageInput` for the accepted layouts)."""
    from .data.images import to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be H x W or H x W x 3/4 (tensors: 3/4 x H x W), got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and (float(np.nanmin(arr)) < 0.0 or float(np.nanmax(arr)) > 1.0):
            raise ValueError("a float image must hold values in [0, 1] (not normalised); got values outside")
        arr = (np.nan_to_num(arr) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, uint16, bool or float in [0, 1], got {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


class Predictor:
    """A prompt learner ready to classify images: eval transform, cached class text features, top-k.

    Build it with :meth:`from_checkpoint` (a folder written by ``mmprompt train``) or :meth:`zero_shot`.
    """

    def __init__(self, learner: PromptLearner, precision: str = "fp32", batch_size: int = 64,
                 path: str | None = None) -> None:
        from .clip.transforms import transform_for

        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.learner = learner.eval()
        self.precision = precision
        self.batch_size = batch_size
        # the preprocessing of the weights (resolution, resize mode, interpolation, statistics)
        self.transform = transform_for(learner.clip.config, train=False)
        self._text: Tensor | None = None
        self.path = path
        self._text_path = self.current_path()  # an unknown path fails here

    # --------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path,
        clip: CLIP | str | Path | None = None,
        device: str | torch.device = "cpu",
        *,
        clip_activation: str | None = None,
        verify: bool = True,
        precision: str = "fp32",
        allow_torchscript: bool = False,
        teacher: str | Path | None = None,
        teacher_clip: str = "ViT-L/14",
        clip_config: str | Path | None = None,
        clip_architecture: str | None = None,
    ) -> Predictor:
        """Load prompts saved by :func:`mmprompt.checkpoint.save_prompts`.

        A student of a distilling method (PromptKD) also loads its frozen teacher: ``teacher`` (a run,
        prompt checkpoint or official checkpoint) or the one the checkpoint records (same SHA-256).

        The CLIP is the one recorded in the checkpoint (``clip_info``: registry name or path, checked
        against its SHA-256 unless ``verify=False``) unless ``clip`` gives a model, a name or a path
        (``clip_config`` / ``clip_architecture`` describe bare weights, as ``load(config=, architecture=)``).
        The classes are the trained ones until :meth:`set_classes` is called.
        """
        from .checkpoint import load_prompts, read_prompt_meta, warn_if_other_weights
        from .engine.clip_source import load_clip_from_info, resolve_clip

        meta = read_prompt_meta(directory)
        if clip is None:
            model = load_clip_from_info(meta.get("clip") or {}, device="cpu", verify=verify)
        else:
            model, info = resolve_clip(clip, clip_activation, "cpu", allow_torchscript=allow_torchscript,
                                       config=clip_config, architecture=clip_architecture)
            warn_if_other_weights(meta, info, directory)
        from .engine.teacher import teacher_for_checkpoint

        frozen = teacher_for_checkpoint(directory, model, source=teacher, teacher_clip=teacher_clip)
        learner = load_prompts(directory, model, teacher=frozen)
        if frozen is not None:
            frozen.to(device=device)
        return cls(learner.to(device), precision=precision)

    @classmethod
    def zero_shot(
        cls,
        clip: CLIP | str | Path,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        device: str | torch.device = "cpu",
        *,
        clip_activation: str | None = None,
        precision: str = "fp32",
        allow_torchscript: bool = False,
        clip_config: str | Path | None = None,
        clip_architecture: str | None = None,
    ) -> Predictor:
        """Zero-shot CLIP with hand-written ``templates`` (their normalised features are averaged)."""
        from .engine.clip_source import resolve_clip
        from .methods import create_learner

        names = [str(n).strip() for n in classnames or []]
        if not names or not all(names):
            raise ValueError("zero-shot prediction needs the class names to choose from (classnames=[...]); "
                             f"got {list(classnames or [])!r}")
        model, _ = resolve_clip(clip, clip_activation, "cpu", allow_torchscript=allow_torchscript,
                                config=clip_config, architecture=clip_architecture)
        learner = create_learner("zeroshot", model, names, {"templates": list(templates)})
        return cls(learner.to(device), precision=precision)

    # --------------------------------------------------------------------------------------------- classes
    @property
    def classes(self) -> list[str]:
        return list(self.learner.classnames)

    @property
    def device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def set_classes(self, names: Sequence[str] | None = None, descriptions: str | Path | None = None) -> None:
        """Classify among ``names`` (default: the current classes) from now on (the prompts are reused as they
        are), with the class descriptions of the JSON file ``descriptions`` for methods that read them."""
        dataset = None
        if descriptions is not None:
            import dataclasses

            from .descriptions import load_descriptions

            dataset = dataclasses.replace(self.learner.dataset, descriptions=load_descriptions(descriptions),
                                          descriptions_source=str(descriptions))
        names = [str(n).strip() for n in (self.learner.classnames if names is None else names)]
        if not names or any(not n for n in names):
            raise ValueError("class names must be non-empty")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be distinct: {names}")
        if getattr(self.learner, "class_specific", False) and names != list(self.learner.classnames):
            raise ValueError("these prompts are class-specific (CoOp with class_specific=true): their class names "
                             "are fixed at training time")
        self.learner.set_classnames(names, dataset=dataset)
        self._text = None

    def current_path(self) -> str | None:
        """The inference path predictions take: :attr:`path` if set (a method with several paths: MMRL's
        ``base`` / ``novel``), else the protocol's choice (the first path on the trained classes, the last one
        on others); None for a method with one path. Raises ValueError for a path the method does not have."""
        path = self.path if self.path is not None else self.learner.protocol_path()
        self.learner.set_inference_path(path)
        return path

    # --------------------------------------------------------------------------------------------- predict
    def _autocast(self) -> Any:
        from .engine.precision import autocast_context

        return autocast_context(self.precision, self.device)

    def _load(self, image: ImageInput) -> Tensor:
        if isinstance(image, (str, Path)):
            from .data.images import load_image

            return self.transform(load_image(image))
        return self.transform(to_pil(image))

    @torch.no_grad()
    def logits(self, images: Sequence[ImageInput]) -> Tensor:
        """Logits [N, C] of ``images`` against the current classes."""
        out = []
        path = self.current_path()
        if path != self._text_path:  # class text features may differ per path
            self._text, self._text_path = None, path
        with self._autocast():
            if self._text is None and not self.learner.image_conditioned_text:
                self._text = self.learner.class_text_features()
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([self._load(im) for im in images[start : start + self.batch_size]])
                out.append(self.learner.predict_logits(batch.to(self.device), self._text).float())
        return torch.cat(out) if out else torch.empty(0, self.learner.num_classes)

    def predict(self, images: Sequence[ImageInput] | ImageInput, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, the ``top_k`` most probable classes as ``(name, probability)``, best first."""
        if isinstance(images, (Image.Image, str, Path)) or (
                isinstance(images, (np.ndarray, Tensor)) and images.ndim <= 3):
            images = [images]
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        probs = self.logits(list(images)).softmax(dim=-1)
        k = min(top_k, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)
        names = self.classes
        return [[(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
                for vs, ix in zip(values, indices, strict=True)]
