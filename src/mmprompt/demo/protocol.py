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
DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)
QUICK_SEEDS: tuple[int, ...] = (1,)


def all_demo_methods() -> list[str]:
    """Every method of the table, in its order: the built-in ones, then installed or registered plugins
    (``mmprompt demo --all-methods``)."""
    from ..methods import list_methods

    return list_methods()


def demo_overrides(methods: Sequence[str], quick: bool) -> list[str]:
    """Each method's overrides from the method table: the paper's recipes mapped to the demo CLIP's 4
    layers (e.g. MaPLe's J = 9 of 12 becomes 3 of 4), and with ``quick`` fewer epochs for long recipes."""
    from ..methods import get_method

    out = []
    for method in methods:
        spec = get_method(method)
        out += [f"{spec.name}:{o}" for o in (*spec.demo_overrides, *(spec.quick_overrides if quick else ()))]
    return out


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
    teachers = demo_teachers(output, methods, data_root, quick, progress, extra_overrides)
    overrides = [*COMMON_OVERRIDES, *demo_overrides(methods, quick), *teachers, *extra_overrides]
    return run_base2novel(
        list(methods), ["mmprompt_demo"], list(seeds), data_root, "demo", output / "runs",
        overrides=overrides, progress=progress, device="cpu",
    )


TEACHER_METHOD = "promptsrc"
"""What the demo trains first as the teacher of a distilling method (PromptKD's official teachers are PromptSRC)."""


def demo_teachers(output: Path, methods: Sequence[str], data_root: Path, quick: bool, progress: bool,
                  extra_overrides: Sequence[str] = ()) -> list[str]:
    """``METHOD:teacher.path=...`` for each method that distils from a teacher (PromptKD) and was given none:
    the demo first trains PromptSRC on the demo world's base classes (seed 1, its demo recipe), as a user would,
    and that run is the teacher. It uses the same demo CLIP as the student (there is no larger demo CLIP), so it
    shows the mechanics of distillation, not the gain of a larger teacher."""
    from ..methods import get_method
    from ..protocols import run_base2novel

    given = {o.split(":", 1)[0] for o in extra_overrides if "teacher.path=" in o}
    needs = [m for m in methods if get_method(m).learner.needs_teacher and m not in given
             and not any(o.startswith("teacher.path=") for o in extra_overrides)]
    if not needs:
        return []
    folder = output / "teacher"
    logger.info("training the demo teacher (%s, seed 1) for %s", TEACHER_METHOD, ", ".join(needs))
    run_base2novel([TEACHER_METHOD], ["mmprompt_demo"], [1], data_root, "demo", folder,
                   overrides=[*COMMON_OVERRIDES, *demo_overrides([TEACHER_METHOD], quick)], progress=progress,
                   device="cpu")
    found = sorted(folder.glob(f"{TEACHER_METHOD}/mmprompt_demo/*/seed1"))
    if not found or not (found[0] / "prompts.json").is_file():
        raise RuntimeError(f"the demo teacher run did not finish under {folder}")
    return [f"{m}:teacher.path={found[0].absolute()}" for m in needs]

