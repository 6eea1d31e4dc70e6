"""mmprompt: multi-modal prompt learning (MaPLe and its baselines) on CLIP."""

__version__ = "0.1.0"
