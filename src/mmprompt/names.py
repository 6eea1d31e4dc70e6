"""One normaliser for every name a user types: methods, datasets, architectures, presets.

Names match when they are equal after lower-casing and dropping everything but letters and digits, so
``ViT-B/16``, ``vit_b16`` and ``VIT B 16`` are one name, and so are ``language_only`` and
``Language-Only``.
"""

from __future__ import annotations

import re

__all__ = ["name_key"]

_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def name_key(name: str) -> str:
    """The comparison key of ``name``: lower case, letters and digits only."""
    return _NOT_ALNUM.sub("", str(name).lower())
