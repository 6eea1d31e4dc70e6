"""Synthetic inputs of ``mmprompt speed``: class names and class descriptions of realistic length.

Class names are 1-4 words (probabilities 0.45 / 0.35 / 0.15 / 0.05) drawn from a fixed list of words
found in real class names, some of which the BPE splits into several tokens; with the MaPLe prompt
``"a photo of a {name}."`` prompts are then 8-20 tokens long.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["CLASSNAME_WORDS", "SYNTHETIC_DESCRIPTIONS", "WORDS_PER_NAME", "synthetic_classnames",
           "synthetic_descriptions"]

# Words that occur in real class names (ImageNet, Caltech101, Pets, Cars, Aircraft, Food, ...).
CLASSNAME_WORDS: tuple[str, ...] = (
    "red",
    "fox",
    "great",
    "white",
    "shark",
    "golden",
    "retriever",
    "spotted",
    "salamander",
    "horned",
    "lizard",
    "axolotl",
    "chickadee",
    "hammerhead",
    "tabby",
    "cat",
    "sports",
    "car",
    "electric",
    "guitar",
    "crossword",
    "puzzle",
    "space",
    "shuttle",
    "yellow",
    "lady",
    "slipper",
    "coral",
    "reef",
    "espresso",
    "maker",
    "pomegranate",
    "toilet",
    "tissue",
    "basset",
    "hound",
    "bernese",
    "mountain",
    "dog",
    "tree",
    "frog",
    "airliner",
    "banjo",
    "monastery",
    "trolleybus",
    "wok",
    "cheeseburger",
    "carbonara",
    "boeing",
    "convertible",
    "sedan",
    "annual",
    "crop",
    "land",
    "pasture",
    "sea",
    "lake",
    "herbaceous",
    "vegetation",
    "playing",
    "cello",
    "knitting",
    "chihuahua",
    "leonberger",
    "abyssinian",
    "sphynx",
    "bolete",
    "hen",
    "wood",
    "rabbit",
    "cliff",
    "dwelling",
    "steel",
    "arch",
    "bridge",
    "paper",
    "towel",
    "water",
    "ouzel",
)
WORDS_PER_NAME: tuple[tuple[int, float], ...] = ((1, 0.45), (2, 0.35), (3, 0.15), (4, 0.05))


def synthetic_classnames(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct class names of 1-4 words (see the module docstring), reproducible from ``seed``."""
    if n < 1:
        raise ValueError(f"the number of classes must be >= 1, got {n}")
    rng = random.Random(seed)
    counts = [k for k, _ in WORDS_PER_NAME]
    weights = [w for _, w in WORDS_PER_NAME]
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = rng.choices(counts, weights)[0]
        name = " ".join(rng.choice(CLASSNAME_WORDS) for _ in range(k))
        if name in seen and len(seen) < n * 50:
            continue
        seen.add(name)
        names.append(name)
    return names


SYNTHETIC_DESCRIPTIONS = 20
"""Sentences per class for methods that read class descriptions (CuPL's files have 20 to 90 per class)."""


def synthetic_descriptions(names: Sequence[str], per_class: int = SYNTHETIC_DESCRIPTIONS,
                           seed: int = 0) -> dict[str, list[str]]:
    """``per_class`` sentences per class of CuPL-like length (12-28 words, the class name included), for
    timing only (they carry no meaning)."""
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name in names:
        out[name] = [" ".join([*name.split(), *(rng.choice(CLASSNAME_WORDS) for _ in range(rng.randint(10, 24)))])
                     + "." for _ in range(per_class)]
    return out
