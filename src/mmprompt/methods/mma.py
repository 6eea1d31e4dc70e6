"""MMA: Multi-Modal Adapter (Yang, Zhang, Wang, Ding, CVPR 2024; official code ZjjConan/Multi-Modal-Adapter
@ 547ee34, trainer ``MultiModalAdapter``).

The CLIP stays frozen and the text input is fixed (``"a photo of a {class}."``): nothing is prompted.
For every 1-based block index ``i`` in ``adapter_start .. adapter_end`` of both towers a bottleneck
adapter runs in parallel with the whole block, on the block's own normalised input:

    A_t,i(z) = up_t,i(ReLU(W_sh,i ReLU(down_t,i(z)) + b_sh,i))
    out = h + mlp(ln_2(h)) + s * A_t,i(ln_1(x)),   h = x + attn(ln_1(x))

The down and up projections belong to one tower (``t`` = text or visual); the middle projection
``W_sh,i`` is shared by both towers, which couples the modalities. This is exactly the CLIP's per-block
adapter insertion point (:meth:`block_adapters`; ``resblocks[i - 1]``), applied on the padded, the
packed and the shared-prefix text paths alike. Training minimises plain cross-entropy; evaluation is the
same forward.

Gradients are those of the official backward, whose gradient-scale layers around every adapter at an
index ``i >= 1`` give each adapter parameter (text, visual and shared) the plain gradient divided by
``s`` (x1000 with s = 0.001) and leave the gradient that flows into the residual stream unchanged.
Here each adapter weight passes through :class:`GradScale` (identity forward, gradient x 1/s backward)
where it is used, which yields the same parameter gradients without touching any activation gradient
(so the residual stream's gradient is bit-identical to the unscaled one, and no activation gradient is
inflated under fp16). Weight decay is applied by the optimizer to the raw parameters, unscaled, as in
the official SGD.

Index 0 (``adapter_start`` 0, an official option that the official configs do not use): the text
adapter acts on the raw token embeddings, before the positional embedding and without a LayerNorm
(``e' = e + s * A_text,0(e)``), and the vision adapter on the tokens after ``ln_pre`` (``z' = z + s *
A_visual,0(z)``, the CLIP's ``input_adapter`` insertion point). The official code does not wrap these two
in gradient-scale layers, so their parameters (and the shared index-0 projection) get the plain gradient.

Fast text paths: the adapters are token-wise functions of each position's own state, so the causal
text encoder keeps its property that no position depends on later ones. EOT truncation, the shared
prefix and chunking are therefore exact and stay on.

Evaluation: class text features are cached per class list and recomputed whenever an adapter
parameter changed (the official code computes them once at the first evaluation and never
invalidates them; that stale cache is deliberately not reproduced).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_number
from ..clip.model import CLIP, Adapter, BlockAdapters
from .base import MethodConfig, PromptLearner

TEXT_CTX_INIT = "a photo of a"
TOWERS = ("text", "visual")


class GradScale(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``factor`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:  # noqa: ANN401 - autograd's context
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN401
        return grad * ctx.factor, None


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``factor`` (identity when ``factor`` is 1)."""
    return x if factor == 1.0 else GradScale.apply(x, factor)


@dataclasses.dataclass
class MMAConfig(MethodConfig):
    text_ctx_init: str = TEXT_CTX_INIT
    """The fixed text before the class name ("" gives just "{class}.")."""
    adapter_start: int = 5
    """First adapted index: block i is 1-based (the official vit_b16_ep5 yaml: 5); 0 also adapts the text token
    embeddings and the vision tokens after ln_pre."""
    adapter_end: int = 12
    """Last adapted block, 1-based, inclusive."""
    adapter_dim: int = 32
    """r: the adapters' bottleneck width."""
    adapter_scale: float = 0.001
    """s: the adapter output's scale (the parameters' gradients are divided by it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.text_ctx_init, str):
            raise ValueError(f"mma.text_ctx_init must be a string, got {self.text_ctx_init!r}")
        check_adapter_range("mma", self.adapter_start, self.adapter_end, self.adapter_dim)
        self.adapter_scale = check_number("mma.adapter_scale", self.adapter_scale, above=0)

    def check_model(self, clip: CLIP) -> None:
        check_adapter_model("mma", self.adapter_end, self.adapter_dim, clip)


def check_adapter_range(method: str, start: int, end: int, dim: int) -> None:
    """Raise ValueError unless ``start`` (>= 0) .. ``end`` is a range of adapter indices and ``dim`` >= 1."""
    check_int(f"{method}.adapter_start", start, minimum=0)
    check_int(f"{method}.adapter_end", end, minimum=1)
    if end < start:
        raise ValueError(f"{method}.adapter_end ({end}) must be >= {method}.adapter_start ({start})")
    check_int(f"{method}.adapter_dim", dim, minimum=1)


def check_adapter_model(method: str, end: int, dim: int, clip: CLIP) -> None:
    """Raise ValueError if the adapters of indices up to ``end`` and width ``dim`` do not fit ``clip``."""
    layers = min(clip.config.text.layers, clip.config.vision.layers)
    if end > layers:
        raise ValueError(f"{method}.adapter_end = {end} is beyond the model's {layers} layers "
                         f"(text {clip.config.text.layers}, vision {clip.config.vision.layers})")
    for tower, width in (("text", clip.config.text.width), ("vision", clip.config.vision.width)):
        if dim == width:
            raise ValueError(f"{method}.adapter_dim = {dim} equals the {tower} width: the official "
                             "adapter then has no down/up projections and its forward fails")


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config from the official ``TRAINER.MMADAPTER`` keys: flat, or under ``TRAINER.MMADAPTER`` /
    ``TRAINER: {MMADAPTER: ...}`` beside other sections (``OPTIM``...), which are ignored here."""
    trainer = official.get("TRAINER.MMADAPTER")
    if trainer is None and isinstance(official.get("TRAINER"), Mapping):
        trainer = official["TRAINER"].get("MMADAPTER")
    if trainer is None:
        trainer = {k: v for k, v in official.items() if k not in ("OPTIM", "DATASET", "DATASET.NAME")}
    keys = {"TEXT_CTX_INIT": "text_ctx_init", "ADAPTER_START": "adapter_start", "ADAPTER_END": "adapter_end",
            "ADAPTER_DIM": "adapter_dim", "ADAPTER_SCALE": "adapter_scale"}
    unknown = sorted(set(trainer) - set(keys) - {"PREC"})
    if unknown:
        raise ValueError(f"official MMA option(s) {unknown} are not understood; known: {sorted(keys)} and PREC")
    return {keys[k]: v for k, v in trainer.items() if k in keys}


class TowerAdapter(nn.Module):
    """One tower's projections at one block: ``down`` (Linear + ReLU) and ``up`` (Linear)."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Linear(width, dim), nn.ReLU())
        self.up = nn.Linear(dim, width)


def kaiming_fan_out(layer: nn.Linear) -> None:
    """The official weight init: Kaiming normal, fan-out, ReLU gain (std sqrt(2 / out_features))."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")


class MMA(PromptLearner):
    method = "mma"
    config: MMAConfig

    def build_prompts(self) -> None:
        cfg = self.config
        widths = {"text": self.clip.config.text.width, "visual": self.clip.config.vision.width}
        indices = [str(i) for i in range(cfg.adapter_start, cfg.adapter_end + 1)]
        for tower in TOWERS:
            setattr(self.trainable, f"{tower}_adapter",
                    nn.ModuleDict({i: TowerAdapter(widths[tower], cfg.adapter_dim) for i in indices}))
        self.trainable.shared_adapter = nn.ModuleDict({i: self.shared_layers(cfg.adapter_dim) for i in indices})
        for module in self.trainable.modules():
            if isinstance(module, nn.Linear):
                self.init_linear(module)
        self._text_cache: tuple[tuple[Any, ...], Tensor] | None = None

    def shared_layers(self, dim: int) -> nn.Sequential:
        """The shared middle projection of one index: Linear(r, r) + ReLU (``.0`` holds the weights)."""
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU())

    def init_linear(self, layer: nn.Linear) -> None:
        """The official init of every adapter Linear: Kaiming fan-out weights, zero biases."""
        kaiming_fan_out(layer)
        nn.init.zeros_(layer.bias)

    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """The adapted range and r from the saved adapters (they must cover one range in both towers)."""
        found: dict[str, set[int]] = {}
        dim = None
        for name, value in state.items():
            m = re.fullmatch(r"trainable\.(text_adapter|visual_adapter|shared_adapter)\.(\d+)\..*", name)
            if m:
                found.setdefault(m.group(1), set()).add(int(m.group(2)))
                if name.endswith("down.0.weight"):
                    dim = value.shape[0]
        text = found.get("text_adapter", set())
        if not text or dim is None:
            return {}
        rng = set(range(min(text), max(text) + 1))
        if any(found.get(k, set()) != rng for k in ("text_adapter", "visual_adapter", "shared_adapter")):
            raise ValueError("the MMA adapters do not cover one range of blocks in both towers: "
                             + "; ".join(f"{k}: {sorted(v)}" for k, v in sorted(found.items())))
        return {"adapter_start": min(rng), "adapter_end": max(rng), "adapter_dim": int(dim)}

    def prepare_classes(self, classnames: list[str]) -> None:
        tokens, embeddings = self.embed_prompts(self.config.text_ctx_init, classnames)
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)
        self._text_cache = None

    # ----- adapters ------------------------------------------------------------------------------------
    def adapter(self, tower: str, index: int) -> Adapter:
        """The residual branch ``z -> s * A_tower,index(z)`` at one index (see the module docstring); its
        parameters' gradients are divided by ``s`` at blocks (``index`` >= 1), not at index 0."""
        own: TowerAdapter = getattr(self.trainable, f"{tower}_adapter")[str(index)]
        shared: nn.Linear = self.trainable.shared_adapter[str(index)][0]
        scale = self.config.adapter_scale
        factor = 1.0 / scale if index >= 1 else 1.0

        def linear(z: Tensor, layer: nn.Linear) -> Tensor:
            return F.linear(z, grad_scale(layer.weight, factor), grad_scale(layer.bias, factor))

        def branch(z: Tensor) -> Tensor:
            h = F.relu(linear(z.to(own.up.weight.dtype), own.down[0]))
            h = F.relu(linear(h, shared))
            return (scale * linear(h, own.up)).to(z.dtype)

        return branch

    def block_adapters(self) -> tuple[BlockAdapters | None, BlockAdapters | None]:
        cfg = self.config
        out = []
        for tower, layers in (("visual", self.clip.config.vision.layers), ("text", self.clip.config.text.layers)):
            slots: list[Adapter | None] = [None] * layers
            for i in range(max(cfg.adapter_start, 1), cfg.adapter_end + 1):
                slots[i - 1] = self.adapter(tower, i)  # index i is resblocks[i - 1]
            out.append(slots)
        return out[0], out[1]

    def input_adapter(self, tower: str) -> Adapter | None:
        """The index-0 branch of ``tower`` (text: on the token embeddings; visual: after ``ln_pre``), or
        None when ``adapter_start`` > 0."""
        return self.adapter(tower, 0) if self.config.adapter_start == 0 else None

    # ----- features ----------------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images, adapters=self.block_adapters()[0],
                                      input_adapter=self.input_adapter("visual"))

    def text_inputs(self) -> Tensor:
        """The class prompts' token embeddings [C, L, Dt], with the text index-0 adapter's output added."""
        adapter = self.input_adapter("text")
        if adapter is None:
            return self.token_embeddings
        return self.token_embeddings + adapter(self.token_embeddings)

    def encode_classes(self) -> Tensor:
        """Class text features [C, E] (not normalised), computed now."""
        return self.encode_text(self.text_inputs(), self.eot)

    def text_features(self) -> Tensor:
        if torch.is_grad_enabled():
            return self.encode_classes()
        return self.cached_text_features()

    def cached_text_features(self) -> Tensor:
        """Class text features without gradients, re-encoded only when the class list, an adapter
        parameter (its version), the device or the autocast state changed since the last call."""
        device = self.clip.token_embedding.weight.device
        autocast = torch.is_autocast_enabled(device.type)
        key = (
            tuple(self.classnames),
            device,
            autocast and torch.get_autocast_dtype(device.type),
            tuple((p.data_ptr(), p._version) for p in self.trainable_parameters()),
        )
        cached = self._text_cache
        if cached is not None and cached[0] == key:
            if torch.is_inference_mode_enabled() or not cached[1].is_inference():
                return cached[1]
        features = self.encode_classes()
        self._text_cache = (key, features)
        return features


OFFICIAL_NAMES = {
    r"(?:adapter_learner\.)?(text|visual)_adapter\.(\d+)\.(down\.0|up)\.(weight|bias)": r"trainable.\1_adapter.\2.\3.\4",
    r"(?:adapter_learner\.)?shared_adapter\.(\d+)\.0\.(weight|bias)": r"trainable.shared_adapter.\1.0.\2",
}
"""Official names (``CustomCLIP.named_parameters()``: ``adapter_learner.…``; the checkpoint in the folder
``adapter_learner`` drops that prefix and also holds the buffers ``token_embedding`` and
``tokenized_prompts``, which match nothing here and are dropped)."""
