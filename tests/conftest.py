"""Shared test settings."""

from __future__ import annotations

import torch

# The test models are tiny: one thread avoids thread start-up and contention costs on small CPUs.
torch.set_num_threads(1)
