"""CLIP architectures as data: dataclasses with named fields, and the named architectures.

Nothing in the model code is specific to one size or one family: every width, depth, head count,
activation, LayerNorm epsilon, pooling rule, patch size, resolution and context length is read from a
:class:`CLIPConfig`. How a loaded checkpoint's config is assembled (and where each field came from) is
:mod:`mmprompt.clip.describe`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..names import name_key
from .transformer import ACTIVATIONS

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "CLIPConfig",
    "Preprocess",
    "TEST_ONLY",
    "TEXT_POOLS",
    "TextConfig",
    "TowerConfig",
    "VISION_POOLS",
    "VisionConfig",
    "get_config",
    "list_architectures",
    "list_models",
]

VISION_POOLS = ("tok", "avg", "map")
"""Image feature pooling: the class token, the mean of the patch tokens, or SigLIP's attention-pooling head."""
TEXT_POOLS = ("argmax", "eos", "last", "first")
"""Text feature pooling: at the largest id (OpenAI's EOT), at the first ``eos_id``, the last or the first position."""
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, kw_only=True)
class TowerConfig:
    """What both towers have: a stack of transformer blocks."""

    tower: ClassVar[str] = "tower"
    """The tower's name in error messages (``vision``, ``text``)."""
    width: int
    """Token width of the transformer."""
    layers: int
    """Number of residual attention blocks."""
    heads: int = 0
    """Attention heads; 0 means OpenAI's rule, width // 64 (at least 1). Loaded checkpoints always state it."""
    mlp_ratio: float = 4.0
    activation: str | None = None
    """MLP activation of this tower; ``None``: the model's (:attr:`CLIPConfig.activation`)."""
    ln_eps: float = 1e-5
    """Epsilon of every LayerNorm of the tower."""

    def __post_init__(self) -> None:
        if self.heads == 0:
            object.__setattr__(self, "heads", max(1, self.width // 64))
        name, width, layers, heads = self.tower, self.width, self.layers, self.heads
        if width <= 0 or layers <= 0 or heads <= 0:
            raise ValueError(f"{name}: width, layers and heads must be positive (got {width}, {layers}, {heads})")
        if width % heads:
            raise ValueError(f"{name}.width ({width}) must be divisible by {name}.heads ({heads})")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"{name}.activation must be one of {ACTIVATIONS} or None, got {self.activation!r}")
        if not self.ln_eps > 0:
            raise ValueError(f"{name}.ln_eps must be positive, got {self.ln_eps}")


@dataclass(frozen=True, kw_only=True)
class VisionConfig(TowerConfig):
    """The ViT image tower."""

    tower: ClassVar[str] = "vision"
    patch_size: int
    """Side of the square patches (the conv1 kernel and stride)."""
    image_size: int
    """Input resolution (square)."""
    pool: str = "tok"
    """One of :data:`VISION_POOLS`."""
    final_ln_after_pool: bool = False
    """``ln_post`` on the pooled feature instead of on every token (differs from the default only for ``avg``)."""
    class_token: bool = True
    """A learned class token before the patches (SigLIP has none)."""
    patch_bias: bool = False
    """The patch embedding convolution has a bias (SigLIP)."""
    ln_pre: bool = True
    """LayerNorm after the embeddings, before the blocks (SigLIP has none)."""
    projection: bool = True
    """A linear map to the joint space (``visual.proj``); without it the features are the pooled tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(
                f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})"
            )
        if self.pool not in VISION_POOLS:
            raise ValueError(f"vision.pool must be one of {VISION_POOLS}, got {self.pool!r}")
        if self.pool == "tok" and not self.class_token:
            raise ValueError("vision.pool 'tok' needs a class token")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Class token (if any) plus patches."""
        return self.grid_size**2 + int(self.class_token)


@dataclass(frozen=True, kw_only=True)
class TextConfig(TowerConfig):
    """The text tower."""

    tower: ClassVar[str] = "text"
    context_length: int = 77
    vocab_size: int = 49408
    causal: bool = True
    """Causal attention mask (CLIP); False: bidirectional (SigLIP, open_clip ``no_causal_mask``)."""
    pool: str = "argmax"
    """One of :data:`TEXT_POOLS`."""
    eos_id: int | None = None
    """The token id pooled at by ``pool="eos"`` (its first occurrence)."""
    proj_bias: bool = False
    """The text projection has a bias (``text_projection_bias``)."""
    start_token: bool = True
    """Every tokenized text begins with a start token (CLIP's SOT); learned prompts go right after it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_length < 3:
            raise ValueError(f"text.context_length must be at least 3, got {self.context_length}")
        if self.pool not in TEXT_POOLS:
            raise ValueError(f"text.pool must be one of {TEXT_POOLS}, got {self.pool!r}")
        if self.pool == "eos" and self.eos_id is None:
            raise ValueError("text.pool 'eos' needs text.eos_id")

    @property
    def prompt_start(self) -> int:
        """Where learned prompt tokens go: after the start token, or at position 0 without one."""
        return int(self.start_token)


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for these weights (eval): resize, optional centre crop, normalise."""

    resize_mode: str = "shortest"
    """``"shortest"``: the shorter side to the size, then a centre crop (CLIP); ``"squash"``: both sides
    to the size, aspect ratio not kept, no crop (DFN, SigLIP)."""
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    source: str = "OpenAI CLIP defaults"
    """Where these values were read (a file and its fields, a registry entry)."""

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP: the two towers, the shared embedding size, the default MLP activation, preprocessing."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    activation: str = "quick_gelu"
    """MLP activation of towers that do not set their own: "quick_gelu" (OpenAI), "gelu" (most LAION), "gelu_tanh"."""
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    logit_bias: bool = False
    """A learned ``logit_bias`` added to the logits (SigLIP's sigmoid loss)."""
    family: str = "clip"
    """``"clip"`` or ``"siglip"`` (informative: the computation follows the fields above)."""
    preprocess: Preprocess | None = None
    """Eval preprocessing of these weights; ``None``: CLIP's (shorter side, centre crop, bicubic) with ``mean``/``std``."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if not self.vision.projection and self.vision.width != self.embed_dim:
            raise ValueError(f"vision without projection needs width == embed_dim ({self.vision.width} != "
                             f"{self.embed_dim})")
        if self.preprocess is not None and (self.preprocess.mean, self.preprocess.std) != (self.mean, self.std):
            object.__setattr__(self, "mean", self.preprocess.mean)
            object.__setattr__(self, "std", self.preprocess.std)

    @property
    def vision_activation(self) -> str:
        return self.vision.activation or self.activation

    @property
    def text_activation(self) -> str:
        return self.text.activation or self.activation

    @property
    def image_preprocess(self) -> Preprocess:
        """The eval preprocessing of these weights (:attr:`preprocess`, or CLIP's with this ``mean``/``std``)."""
        if self.preprocess is not None:
            return self.preprocess
        return Preprocess(mean=self.mean, std=self.std, source="CLIP defaults (mean/std of the config)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        d = dict(d)
        vision = VisionConfig(**d.pop("vision"))
        text = TextConfig(**d.pop("text"))
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        if d.get("preprocess") is not None:
            d["preprocess"] = Preprocess(**d["preprocess"])
        return cls(vision=vision, text=text, **d)

    def replace(self, **changes: Any) -> CLIPConfig:
        return dataclasses.replace(self, **changes)


def _arch(
    *,
    embed_dim: int,
    vision_width: int,
    vision_layers: int,
    vision_heads: int,
    patch_size: int,
    image_size: int,
    text_width: int,
    text_layers: int,
    text_heads: int,
    vision_mlp_ratio: float = 4.0,
    activation: str = "quick_gelu",
) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(
            width=vision_width,
            layers=vision_layers,
            heads=vision_heads,
            patch_size=patch_size,
            image_size=image_size,
            mlp_ratio=vision_mlp_ratio,
        ),
        text=TextConfig(width=text_width, layers=text_layers, heads=text_heads),
        activation=activation,
    )


_B = {"embed_dim": 512, "vision_width": 768, "vision_layers": 12, "vision_heads": 12, "image_size": 224,
      "text_width": 512, "text_layers": 12, "text_heads": 8}
_L = {"embed_dim": 768, "vision_width": 1024, "vision_layers": 24, "vision_heads": 16, "patch_size": 14,
      "text_width": 768, "text_layers": 12, "text_heads": 12}
# The open_clip ViT-H/g/bigG shapes (open_clip model_configs); their activation differs between releases
# (LAION: gelu, DFN / MetaCLIP: quick_gelu), so loading weights of these shapes still states it.
_H = {"embed_dim": 1024, "vision_width": 1280, "vision_layers": 32, "vision_heads": 16, "patch_size": 14,
      "image_size": 224, "text_width": 1024, "text_layers": 24, "text_heads": 16, "activation": "gelu"}

# Named architectures. The OpenAI ones follow the released weights; the tiny ones are for tests.
ARCHITECTURES: dict[str, CLIPConfig] = {
    "ViT-B/32": _arch(**_B, patch_size=32),
    "ViT-B/16": _arch(**_B, patch_size=16),
    "ViT-L/14": _arch(**_L, image_size=224),
    "ViT-L/14@336px": _arch(**_L, image_size=336),
    "ViT-H/14": _arch(**_H),
    "ViT-g/14": _arch(**{**_H, "vision_width": 1408, "vision_layers": 40}, vision_mlp_ratio=4.3637),
    "ViT-bigG/14": _arch(
        **{**_H, "embed_dim": 1280, "vision_width": 1664, "vision_layers": 48, "text_width": 1280,
           "text_layers": 32, "text_heads": 20},
        vision_mlp_ratio=4.9231,
    ),
    # The shape of the official parity reference (shared/parity): 10 layers per tower.
    "tiny-parity": _arch(embed_dim=64, vision_width=128, vision_layers=10, vision_heads=2, patch_size=16,
                         image_size=64, text_width=64, text_layers=10, text_heads=1),
    # Small enough to train on a laptop CPU in tests.
    "tiny": _arch(embed_dim=32, vision_width=96, vision_layers=4, vision_heads=1, patch_size=8, image_size=32,
                  text_width=64, text_layers=4, text_heads=1),
}
TEST_ONLY: frozenset[str] = frozenset({"tiny-parity", "tiny"})
"""Architectures with no released weights, for tests and the parity reference."""
_DESCRIPTIONS = {
    "ViT-B/32": "OpenAI CLIP ViT-B/32 (also LAION / DataComp releases of that shape)",
    "ViT-B/16": "OpenAI CLIP ViT-B/16 (also LAION / DataComp releases of that shape)",
    "ViT-L/14": "OpenAI CLIP ViT-L/14 (also LAION / DataComp / DFN releases of that shape)",
    "ViT-L/14@336px": "OpenAI CLIP ViT-L/14 at 336 px",
    "ViT-H/14": "open_clip ViT-H-14 shape (LAION-2B, DFN5B, MetaCLIP weights; 16 heads; weights from a path)",
    "ViT-g/14": "open_clip ViT-g-14 shape (LAION-2B weights; 16 heads; weights from a path)",
    "ViT-bigG/14": "open_clip ViT-bigG-14 shape (LAION-2B weights; 16 vision / 20 text heads; weights from a path)",
    "tiny-parity": "test-only: the shape of the official parity reference (no released weights)",
    "tiny": "test-only: a 4-layer CLIP for CPU tests (no released weights)",
}


def list_architectures(include_test_only: bool = True) -> list[str]:
    """Names accepted by :func:`get_config` (without the test-only ones unless asked)."""
    return [n for n in ARCHITECTURES if include_test_only or n not in TEST_ONLY]


def list_models() -> dict[str, str]:
    """Every named architecture with a one-line description; test-only ones say so."""
    return {name: _DESCRIPTIONS.get(name, "") for name in ARCHITECTURES}


def get_config(name: str) -> CLIPConfig:
    """The configuration of a named architecture (``ViT-B/16``, ``vit-b-16`` and ``ViT-B-16`` all match)."""
    wanted = name_key(name)
    for key, cfg in ARCHITECTURES.items():
        if name_key(key) == wanted:
            return cfg
    raise KeyError(f"unknown CLIP architecture {name!r}; known: {', '.join(ARCHITECTURES)}")


def _count_blocks(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def shapes_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The sizes a state dict in OpenAI's key layout (as :func:`mmprompt.clip.convert.convert_to_openai`
    returns it) shows by its tensors' shapes: ``{"embed_dim": ..., "vision": {...}, "text": {...}}``, plus
    what the presence of tensors shows (class token, patch bias, ``ln_pre``, MAP head, biases).
    Heads, activations, epsilons, masks and pooling are not in the shapes."""
    keys = list(state_dict)
    required = ["visual.conv1.weight", "visual.positional_embedding", "positional_embedding",
                "token_embedding.weight", "ln_final.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise KeyError(
            f"not an OpenAI-layout CLIP state dict: missing {missing}; keys found start with "
            f"{sorted({k.split('.')[0] for k in keys})[:20]}"
        )
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    if conv.shape[-1] != conv.shape[-2]:
        raise ValueError(f"visual.conv1.weight {tuple(conv.shape)}: non-square patches are not supported")
    class_token = "visual.class_embedding" in state_dict
    grid2 = state_dict["visual.positional_embedding"].shape[0] - int(class_token)
    grid = round(grid2**0.5)
    if grid * grid != grid2:
        raise ValueError(f"visual.positional_embedding has {grid2} patch positions, not a square grid: "
                         "non-square image sizes are not supported")
    text_width = int(state_dict["ln_final.weight"].shape[0])
    projection = "visual.proj" in state_dict
    pool = "map" if "visual.attn_pool.probe" in state_dict else "tok"
    return {
        "embed_dim": int(state_dict["text_projection"].shape[1]) if "text_projection" in state_dict else text_width,
        "vision": {
            "width": vision_width,
            "layers": _count_blocks(keys, "visual.transformer.resblocks."),
            "patch_size": patch,
            "image_size": patch * grid,
            "mlp_ratio": state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width,
            "class_token": class_token,
            "patch_bias": "visual.conv1.bias" in state_dict,
            "ln_pre": "visual.ln_pre.weight" in state_dict,
            "projection": projection,
            "pool": pool,
        },
        "text": {
            "width": text_width,
            "layers": _count_blocks(keys, "transformer.resblocks."),
            "context_length": int(state_dict["positional_embedding"].shape[0]),
            "vocab_size": int(state_dict["token_embedding.weight"].shape[0]),
            "mlp_ratio": state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
            "proj_bias": "text_projection_bias" in state_dict,
        },
        "logit_bias": "logit_bias" in state_dict,
    }


def config_from_state_dict(
    state_dict: Mapping[str, Any], activation: str = "quick_gelu", heads: tuple[int, int] | None = None
) -> CLIPConfig:
    """The CLIP an OpenAI-layout state dict describes, built as OpenAI's own ``build_model`` builds it.

    ``heads`` (vision, text); ``None`` applies OpenAI's ``build_model`` rule, width // 64, which is right
    for OpenAI's releases and the official parity reference only. :func:`mmprompt.clip.load` never uses
    that rule: it reads the heads from the checkpoint's config or asks for them.
    """
    s = shapes_from_state_dict(state_dict)
    vh, th = heads if heads is not None else (0, 0)
    return CLIPConfig(
        embed_dim=s["embed_dim"],
        vision=VisionConfig(heads=vh, **s["vision"]),
        text=TextConfig(heads=th, **s["text"]),
        activation=activation,
        logit_bias=s["logit_bias"],
    )
