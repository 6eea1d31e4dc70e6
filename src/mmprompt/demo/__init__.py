"""The built-in offline demo world: a tiny CLIP pretrained by this project and a benchmark to adapt it to.

* :func:`load_demo_clip`: the shipped CLIP (``assets/demo_clip.safetensors``), checked against the
  SHA-256 recorded in ``assets/demo_clip.json``. It was pretrained by ``scripts/pretrain_demo_clip.py``
  on rendered filled shapes with compositional captions.
* :func:`generate_demo_dataset`: the demo benchmark (outline shapes on cluttered backgrounds, 25 colour x
  shape classes) in CoOp's split-file layout, for any reader of split files.
"""

from __future__ import annotations

from .weights import DemoWeightsError, demo_clip_info, load_demo_clip
from .world import DEMO_IMAGE_SIZE, DEMO_TEMPLATE, demo_classnames, generate_demo_dataset

__all__ = [
    "DEMO_IMAGE_SIZE",
    "DEMO_TEMPLATE",
    "DemoWeightsError",
    "demo_clip_info",
    "demo_classnames",
    "generate_demo_dataset",
    "load_demo_clip",
]
