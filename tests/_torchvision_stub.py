"""Import open_clip (a test reference) where torchvision cannot be installed.

open_clip imports a few torchvision names at module level (its image transforms and a frozen BatchNorm
class), none of which the model code the tests compare against uses. When torchvision is missing, those
names are provided by empty stand-ins for the duration of the import only, then removed again so that no
other library sees a fake torchvision.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_NAMES = {
    "torchvision": [],
    "torchvision.transforms": ["Normalize", "Compose", "RandomResizedCrop", "InterpolationMode", "ToTensor",
                               "Resize", "CenterCrop", "ColorJitter", "Grayscale"],
    "torchvision.transforms.functional": [],
    "torchvision.ops": [],
    "torchvision.ops.misc": ["FrozenBatchNorm2d"],
}


def import_open_clip() -> Any:
    """The ``open_clip`` module, or ``None`` when it is not installed."""
    if importlib.util.find_spec("open_clip") is None:
        return None
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("open_clip")
    try:  # let transformers record torchvision's absence before the stand-ins exist
        from transformers.utils import is_torchvision_available

        is_torchvision_available()
    except ImportError:
        pass
    added = []
    for name, attrs in _NAMES.items():
        module = types.ModuleType(name)
        for attr in attrs:
            setattr(module, attr, type(attr, (), {"BICUBIC": "bicubic", "BILINEAR": "bilinear", "NEAREST": "nearest"}))
        sys.modules[name] = module
        added.append(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    try:
        return importlib.import_module("open_clip")
    finally:
        for name in added:
            sys.modules.pop(name, None)
