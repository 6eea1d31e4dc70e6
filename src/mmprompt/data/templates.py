"""Each dataset's hand-written zero-shot template (CoOp's ``CUSTOM_TEMPLATES``)."""

from __future__ import annotations

from mmprompt.data.datasets import resolve_name

TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "mmprompt_demo": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

def get_template(name: str) -> str:
    """The zero-shot template of a dataset ("a photo of a {}." for custom datasets)."""
    if name.lower().startswith("custom"):
        return DEFAULT_TEMPLATE
    return TEMPLATES[resolve_name(name)]
