"""``mmprompt demo``: base-to-novel on the demo world with the demo CLIP, through the real protocol code.

The demo world is just another dataset (``mmprompt_demo``): the sweep below is
:func:`mmprompt.protocols.run_base2novel` with the paper's presets, adjusted only where the tiny
4-layer CLIP requires it (prompt depths scaled from 12 layers to 4).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .world import generate_demo_dataset

logger = logging.getLogger(__name__)

DEFAULT_METHODS: tuple[str, ...] = ("zeroshot", "coop", "maple")
ALL_METHODS: tuple[str, ...] = ("zeroshot", "coop", "cocoop", "vpt", "language_only", "ivlp", "maple")
DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)
QUICK_SEEDS: tuple[int, ...] = (1,)

# The paper's recipes (SPEC section 3) on a 12-layer CLIP, mapped to the demo CLIP's 4 layers:
# MaPLe's J = 9 of 12 becomes 3 of 4; the "all layers" depths of IVLP, language-only and VPT become 4.
DEMO_OVERRIDES: tuple[str, ...] = (
    "maple:method.depth=3",
    "ivlp:method.depth_text=4",
    "ivlp:method.depth_vision=4",
    "language_only:method.depth_text=4",
    "vpt:method.depth_vision=4",
)
# --quick: the same recipes with fewer CoOp/CoCoOp epochs (their presets run 200 and 10 epochs).
QUICK_OVERRIDES: tuple[str, ...] = ("coop:optim.epochs=50", "cocoop:optim.epochs=2")
# Every run: load images in the main process (32-pixel images: worker start-up would dominate), and keep
# at least half of each 32-pixel image in the training crops (the recipe's 8% usually cuts the shape off).
COMMON_OVERRIDES: tuple[str, ...] = ("data.num_workers=0", "data.crop_scale_min=0.5")


def run_demo(
    output: str | Path,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    quick: bool = False,
    data_root: str | Path | None = None,
    progress: bool = True,
    extra_overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Generate the demo world (once) and run base-to-novel on it; returns the protocol's results."""
    from ..protocols import run_base2novel

    output = Path(output)
    data_root = Path(data_root) if data_root is not None else output / "data"
    generate_demo_dataset(data_root)
    from ..methods import canonical_method

    chosen = {canonical_method(m) for m in methods}
    per_method = [o for o in (*DEMO_OVERRIDES, *(QUICK_OVERRIDES if quick else ())) if o.split(":")[0] in chosen]
    overrides = [*COMMON_OVERRIDES, *per_method, *extra_overrides]
    return run_base2novel(
        list(methods), ["mmprompt_demo"], list(seeds), data_root, "demo", output / "runs",
        overrides=overrides, progress=progress, device="cpu",
    )
