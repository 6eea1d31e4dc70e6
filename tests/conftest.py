"""Shared test settings."""

from __future__ import annotations

import pytest
import torch

from mmprompt.clip import CLIP, get_config

# The test models are tiny: one thread avoids thread start-up and contention costs on small CPUs.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip() -> CLIP:
    """The tiny random CLIP (4 layers per tower, seed 0) that the method tests build learners on; a test module
    that needs another model defines its own ``clip`` fixture."""
    torch.manual_seed(0)
    return CLIP(get_config("tiny")).eval()
