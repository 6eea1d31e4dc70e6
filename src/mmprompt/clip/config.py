"""CLIP architectures as data: dataclasses, the named architectures, and inference from weights.

Nothing in the model code is specific to one size: every width, depth, head count, patch size,
resolution and context length is read from a :class:`CLIPConfig`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Activation = Literal["quick_gelu", "gelu"]
ACTIVATIONS: tuple[str, ...] = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class VisionConfig:
    """The ViT image tower."""

    width: int
    """Token width of the vision transformer."""
    layers: int
    """Number of residual attention blocks."""
    patch_size: int
    """Side of the square patches (the conv1 kernel and stride)."""
    image_size: int
    """Input resolution (square)."""
    heads: int = 0
    """Attention heads; 0 means OpenAI's rule, width // 64 (at least 1)."""
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.heads == 0:
            object.__setattr__(self, "heads", max(1, self.width // 64))
        _check_tower("vision", self.width, self.layers, self.heads)
        if self.patch_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(
                f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Class token plus patches."""
        return self.grid_size**2 + 1


@dataclass(frozen=True)
class TextConfig:
    """The causal text tower."""

    width: int
    layers: int
    heads: int = 0
    """Attention heads; 0 means OpenAI's rule, width // 64 (at least 1)."""
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.heads == 0:
            object.__setattr__(self, "heads", max(1, self.width // 64))
        _check_tower("text", self.width, self.layers, self.heads)
        if self.context_length < 3:
            raise ValueError(f"text.context_length must be at least 3, got {self.context_length}")


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP: the two towers, the shared embedding size and the MLP activation."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    activation: str = "quick_gelu"
    """MLP activation: "quick_gelu" (OpenAI weights) or "gelu" (most LAION weights)."""
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")

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
        return cls(vision=vision, text=text, **d)

    def replace(self, **changes: Any) -> CLIPConfig:
        return dataclasses.replace(self, **changes)


def _check_tower(name: str, width: int, layers: int, heads: int) -> None:
    if width <= 0 or layers <= 0 or heads <= 0:
        raise ValueError(f"{name}: width, layers and heads must be positive (got {width}, {layers}, {heads})")
    if width % heads:
        raise ValueError(f"{name}.width ({width}) must be divisible by {name}.heads ({heads})")


def _openai(embed: int, vw: int, vl: int, patch: int, res: int, tw: int, tl: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(width=vw, layers=vl, patch_size=patch, image_size=res),
        text=TextConfig(width=tw, layers=tl),
        activation="quick_gelu",
    )


# Named architectures. The OpenAI ones follow the released weights; the tiny ones are for tests.
ARCHITECTURES: dict[str, CLIPConfig] = {
    "ViT-B/32": _openai(512, 768, 12, 32, 224, 512, 12),
    "ViT-B/16": _openai(512, 768, 12, 16, 224, 512, 12),
    "ViT-L/14": _openai(768, 1024, 24, 14, 224, 768, 12),
    "ViT-L/14@336px": _openai(768, 1024, 24, 14, 336, 768, 12),
    # The shape of the official parity reference (shared/parity): 10 layers per tower.
    "tiny-parity": _openai(64, 128, 10, 16, 64, 64, 10),
    # Small enough to train on a laptop CPU in tests.
    "tiny": _openai(32, 96, 4, 8, 32, 64, 4),
}


def _canonical(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def list_architectures() -> list[str]:
    """Names accepted by :func:`get_config`."""
    return list(ARCHITECTURES)


def get_config(name: str) -> CLIPConfig:
    """The configuration of a named architecture (``ViT-B/16``, ``vit-b-16`` and ``ViT-B-16`` all match)."""
    wanted = _canonical(name)
    for key, cfg in ARCHITECTURES.items():
        if _canonical(key) == wanted:
            return cfg
    raise KeyError(f"unknown CLIP architecture {name!r}; known: {', '.join(ARCHITECTURES)}")


def _count_blocks(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def config_from_state_dict(state_dict: Mapping[str, Any], activation: str = "quick_gelu") -> CLIPConfig:
    """Infer the architecture from a state dict in OpenAI key layout.

    Heads follow OpenAI's rule (width // 64). The activation cannot be read from weights and must be
    given by the caller.
    """
    keys = list(state_dict)
    required = ["visual.conv1.weight", "visual.positional_embedding", "text_projection", "positional_embedding",
                "token_embedding.weight", "ln_final.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise KeyError(
            f"not an OpenAI-layout CLIP state dict: missing {missing}; keys found start with "
            f"{sorted({k.split('.')[0] for k in keys})[:20]}"
        )
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_layers = _count_blocks(keys, "visual.transformer.resblocks.")
    text_layers = _count_blocks(keys, "transformer.resblocks.")
    vision_mlp = state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width
    text_width = int(state_dict["ln_final.weight"].shape[0])
    text_mlp = state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width
    return CLIPConfig(
        embed_dim=int(state_dict["text_projection"].shape[1]),
        vision=VisionConfig(
            width=vision_width, layers=vision_layers, patch_size=patch, image_size=patch * grid, mlp_ratio=vision_mlp
        ),
        text=TextConfig(
            width=text_width,
            layers=text_layers,
            context_length=int(state_dict["positional_embedding"].shape[0]),
            vocab_size=int(state_dict["token_embedding.weight"].shape[0]),
            mlp_ratio=text_mlp,
        ),
        activation=activation,
    )
