"""MMA++: Effective Multi-Modal Adaptation (Yang, Zhang, Wang, Xie, TPAMI 2026; official code
ZjjConan/VLM-MMApp @ e686c34, trainer ``MultiModalAdapterPP``).

MMA++ keeps MMA's adapters (:mod:`mmprompt.methods.mma`: per block in ``adapter_start .. adapter_end``
of both towers, tower-specific down/up projections and a shared middle projection) and changes how they
are trained and used:

* The branch is ``A_t,i(z; a) = a * up(Drop(ReLU(W_sh ReLU(down(z)) + b_sh)))``: a dropout
  (``adapter_drop``) follows the shared projection, and the fusion scale ``a`` depends on the pass.
* Each class has several text prompts: the 80 hand-crafted ImageNet templates (``input_prompts`` "hc") or
  the class descriptions (``cupl``: CuPL-style sentences, given with ``--descriptions FILE``). Training
  draws one prompt per class at every step; evaluation uses the renormalised mean of the normalised
  features of all prompts of a class.
* Every training step runs twice on the same prompts and images: the main pass (``a`` =
  ``adapter_train_scale``, with gradient) and a consistency pass without gradient (``a`` = u *
  ``adapter_train_scale``, u ~ U[0, 1), fresh dropout masks). The loss is
  ``ce - REG * cos_text - REG * cos_image`` (REG = ``adapter_train_scale_reg``), the cosines between the
  normalised features of the two passes. Gradients are plain (no gradient-scale layers, unlike MMA).
* Evaluation uses ``a`` = ``adapter_test_scale`` and no dropout.
* Biases keep PyTorch's default Linear init (MMA zeroes them). With ``adapter_start`` 0 the vision
  index-0 adapter acts after ``ln_pre``; the text index-0 adapter exists (trainable, saved) but is never
  called, so it gets no gradient (None) and the optimizer leaves it alone.

Objective terms: ``ce``, ``cos_text``, ``cos_image`` (weights 1, -REG, -REG) and ``reg`` (the weighted
consistency part, ``-REG * (cos_text + cos_image)``; the official log's ``t_loss + i_loss``).

Random draws (the prompt index per class, u, the dropout masks) come from torch's generators, or from
:meth:`MMAPP.inject_draws` for one step (the parity test feeds the official draws). Injected masks are laid
out per token, so a step with injected draws encodes text over the full context. Without injection, text is
encoded with the usual exact fast paths, except that the shared prefix is off in training passes with
dropout (one mask per prompt and position, as in the official code).

Deliberate differences (spec quirks D): evaluation restores nothing because nothing is changed (the
official eval leaves the scale at the test value and never invalidates its text cache; here each pass
chooses its scale and the cache follows the adapters). Classes may have different numbers of
descriptions (the official code needs equal counts): each class then draws from, and averages over, its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import ConfigError, check_number
from ..clip.model import CLIP, Adapter
from ..descriptions import match_descriptions
from .base import MethodConfig
from .contract import Objective
from .mma import MMA, TowerAdapter, check_adapter_model, check_adapter_range, kaiming_fan_out
from .mma import OFFICIAL_NAMES as OFFICIAL_NAMES  # the same official parameter names as MMA
from .templates import IMAGENET_TEMPLATES

PROMPT_SETS = ("hc", "cupl")

HC_TEMPLATES: tuple[str, ...] = IMAGENET_TEMPLATES
"""The hand-crafted prompt set: CLIP's 80 templates in the official order (the drawn prompt index refers to it)."""


@dataclasses.dataclass
class MMAPPConfig(MethodConfig):
    input_prompts: str = "cupl"
    """The text prompts per class: "hc" (the 80 ImageNet templates) or "cupl" (class descriptions, given with
    ``--descriptions FILE``). Official b2n script: cupl."""
    adapter_start: int = 5
    """First adapted index: block i is 1-based; 0 also adapts the vision tokens after ln_pre."""
    adapter_end: int = 12
    """Last adapted block, 1-based, inclusive."""
    adapter_dim: int = 32
    """r: the adapters' bottleneck width."""
    adapter_train_scale: float = 0.01
    """The fusion scale of the main training pass (the consistency pass uses u times it, u ~ U[0, 1))."""
    adapter_train_scale_reg: float = 2.5
    """REG: the weight of each consistency cosine (loss = ce - REG * cos_text - REG * cos_image)."""
    adapter_test_scale: float = 0.0065
    """The fusion scale at evaluation."""
    adapter_drop: float = 0.1
    """Dropout after the shared projection, in both training passes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.input_prompts, str) or self.input_prompts.lower() not in PROMPT_SETS:
            raise ConfigError(f"mmapp.input_prompts must be one of {PROMPT_SETS}, got {self.input_prompts!r}")
        self.input_prompts = self.input_prompts.lower()
        check_adapter_range("mmapp", self.adapter_start, self.adapter_end, self.adapter_dim)
        self.adapter_train_scale = check_number("mmapp.adapter_train_scale", self.adapter_train_scale, above=0)
        self.adapter_train_scale_reg = check_number("mmapp.adapter_train_scale_reg", self.adapter_train_scale_reg,
                                                    minimum=0)
        self.adapter_test_scale = check_number("mmapp.adapter_test_scale", self.adapter_test_scale, minimum=0)
        self.adapter_drop = check_number("mmapp.adapter_drop", self.adapter_drop, minimum=0, maximum=0.999)

    def check_model(self, clip: CLIP) -> None:
        check_adapter_model("mmapp", self.adapter_end, self.adapter_dim, clip)


_OFFICIAL_KEYS = {"INPUT_PROMPTS": "input_prompts", "ADAPTER_START": "adapter_start", "ADAPTER_END": "adapter_end",
                  "ADAPTER_DIM": "adapter_dim", "ADAPTER_TRAIN_SCALE": "adapter_train_scale",
                  "ADAPTER_TRAIN_SCALE_REG": "adapter_train_scale_reg", "ADAPTER_TEST_SCALE": "adapter_test_scale",
                  "ADAPTER_DROP": "adapter_drop"}


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config from the official ``TRAINER.MMADAPTERPP`` keys (flat, dotted or nested; other sections are
    ignored). ``TEXT_CTX_INIT`` is accepted and unused, as in the official code; PREC is a run setting."""
    trainer = official.get("TRAINER.MMADAPTERPP")
    if trainer is None and isinstance(official.get("TRAINER"), Mapping):
        trainer = official["TRAINER"].get("MMADAPTERPP")
    if trainer is None:
        trainer = {k: v for k, v in official.items() if k not in ("OPTIM", "DATASET", "DATASET.NAME")}
    unknown = sorted(set(trainer) - set(_OFFICIAL_KEYS) - {"PREC", "TEXT_CTX_INIT"})
    if unknown:
        raise ValueError(f"official MMA++ option(s) {unknown} are not understood; known: {sorted(_OFFICIAL_KEYS)}, "
                         "TEXT_CTX_INIT (unused) and PREC")
    return {_OFFICIAL_KEYS[k]: v for k, v in trainer.items() if k in _OFFICIAL_KEYS}


@dataclasses.dataclass
class _Pass:
    """What the adapters do in the pass that runs now."""

    alpha: float | Tensor
    name: str | None = None  # "main" / "reg" in training (names the injected masks), None at evaluation
    dropout: bool = False


class MMAPP(MMA):
    method = "mmapp"
    config: MMAPPConfig  # type: ignore[assignment]
    uses_descriptions = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.adapter_start == 0:  # never called: saved and given to the optimizer, but no gradient
            self.trainable.text_adapter["0"].requires_grad_(False)  # (so data parallelism does not wait for one)

    @classmethod
    def needs_descriptions(cls, config: MethodConfig) -> bool:
        return getattr(config, "input_prompts", None) == "cupl"

    def build_prompts(self) -> None:
        self._pass = _Pass(self.config.adapter_test_scale)
        self._draws: dict[str, Tensor] = {}
        self._pending: dict[str, Tensor] = {}
        self._pooled_rows: dict[str, Tensor] = {}
        super().build_prompts()

    def shared_layers(self, dim: int) -> nn.Sequential:
        """Linear(r, r) + ReLU + Dropout (the dropout is applied by :meth:`adapter`, see ``_dropout``)."""
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(self.config.adapter_drop))

    def init_linear(self, layer: nn.Linear) -> None:
        """Kaiming fan-out weights; biases keep PyTorch's default Linear init (MMA zeroes them)."""
        kaiming_fan_out(layer)

    # ----- class prompts -----------------------------------------------------------------------------
    def prepare_classes(self, classnames: list[str]) -> None:
        if self.config.input_prompts == "hc":
            prompts = [[t.replace("{}", name) for t in HC_TEMPLATES] for name in classnames]
        else:
            if self.dataset.descriptions is None and not self.dataset.descriptions_source:
                raise ConfigError("mmapp with method.input_prompts=cupl needs class descriptions: pass "
                                  "--descriptions FILE (JSON: class name -> list of sentences), or use "
                                  "method.input_prompts=hc (the 80 hand-crafted templates)")
            prompts = match_descriptions(classnames, self.dataset.descriptions,
                                         self.dataset.descriptions_source or "the class descriptions")
        counts = torch.tensor([len(p) for p in prompts])
        width = int(counts.max())
        length = self.clip.config.text.context_length
        device = self.clip.token_embedding.weight.device
        tokens = torch.zeros(len(prompts), width, length, dtype=torch.long)
        for c, texts in enumerate(prompts):
            tokens[c, : len(texts)] = self.tokenizer(list(texts), context_length=length, truncate=True)
        self.register_buffer("prompt_tokens", tokens.to(device), persistent=False)
        self.register_buffer("prompt_counts", counts.to(device), persistent=False)
        self._text_cache = None

    def _encode_tokens(self, tokens: Tensor) -> Tensor:
        """Text features [N, E] (not normalised) of prompts' token ids [N, L], adapted as the current pass says."""
        with torch.no_grad():
            embeddings = self.clip.token_embedding(tokens).float()
        eot = self.clip.text_pool_index(tokens)
        if self._draws:  # injected masks are laid out per token: the full context, as the official code
            self._pooled_rows["text"] = eot
            return self.clip.encode_text_embeddings(embeddings, eot, truncate=False,
                                                    adapters=self.block_adapters()[1])
        if not self._pass.dropout or not self.encoder.share_text_prefix:
            return self.encode_text(embeddings, eot)
        encoder = self.encoder  # a shared prefix would share dropout masks between the classes' prompts
        self.encoder = dataclasses.replace(encoder, share_text_prefix=False)
        try:
            return self.encode_text(embeddings, eot)
        finally:
            self.encoder = encoder

    def encode_classes(self) -> Tensor:
        """Evaluation class features [C, E]: the renormalised mean of each class's normalised prompt features."""
        counts = self.prompt_counts
        total = torch.zeros(len(counts), self.clip.config.embed_dim, device=counts.device)
        for t in range(self.prompt_tokens.shape[1]):
            rows = (counts > t).nonzero().flatten()
            tokens = self.prompt_tokens[rows, t] if len(rows) < len(counts) else self.prompt_tokens[:, t]
            feats = F.normalize(self._encode_tokens(tokens).float(), dim=-1)
            total = total.index_add(0, rows, feats) if len(rows) < len(counts) else total + feats
        return F.normalize(total / counts[:, None].to(total.dtype), dim=-1)

    # ----- adapters ----------------------------------------------------------------------------------
    def adapter(self, tower: str, index: int) -> Adapter:
        """``z -> a * up(Drop(ReLU(W_sh ReLU(down(z)) + b_sh)))`` with the current pass's scale and dropout."""
        own: TowerAdapter = getattr(self.trainable, f"{tower}_adapter")[str(index)]
        shared: nn.Linear = self.trainable.shared_adapter[str(index)][0]

        def branch(z: Tensor) -> Tensor:
            h = F.relu(own.down[0](z.to(own.up.weight.dtype)))
            h = self._dropout(F.relu(shared(h)), tower, index)
            return (own.up(h) * self._pass.alpha).to(z.dtype)

        return branch

    def input_adapter(self, tower: str) -> Adapter | None:
        """Index 0: the vision adapter after ``ln_pre``; the text one is never called (official)."""
        if tower == "text" or self.config.adapter_start > 0:
            return None
        return self.adapter(tower, 0)

    def _dropout(self, h: Tensor, tower: str, index: int) -> Tensor:
        p = self.config.adapter_drop
        if not self._pass.dropout or p == 0:
            return h
        mask = self._draws.get(f"dropout/{self._pass.name}/{tower}/{index}")
        if mask is None:
            return F.dropout(h, p, training=True)
        mask = mask.to(h.device)
        if mask.shape[1] != h.shape[1]:  # the last block computes only the pooled token of each sequence
            rows = self._pooled_rows.get(tower, torch.zeros(len(mask), dtype=torch.long)).to(h.device)
            mask = mask[torch.arange(len(mask), device=h.device), rows].unsqueeze(1)
        return h * mask.to(h.dtype) / (1 - p)

    @contextmanager
    def _running(self, state: _Pass) -> Iterator[None]:
        previous, self._pass = self._pass, state
        try:
            yield
        finally:
            self._pass = previous

    # ----- training ----------------------------------------------------------------------------------
    def inject_draws(self, draws: Mapping[str, Tensor]) -> None:
        """Fix the next training step's draws: ``template_index`` [C] (the prompt of each class),
        ``reg_scale`` (0-d: the consistency pass's scale, already times ``adapter_train_scale``) and
        ``dropout/{main,reg}/{text,visual}/{i}`` (bool keep-masks, batch-first: [C, L, r] for text over the
        full context, [B, tokens, r] for vision). Draws not given are random."""
        known = ("template_index", "reg_scale", "dropout/")
        unknown = sorted(k for k in draws if not k.startswith(known))
        if unknown:
            raise ValueError(f"mmapp cannot inject {unknown}; it draws {known}")
        self._pending = {k: torch.as_tensor(v) for k, v in draws.items()}

    def _draw_prompts(self, draws: Mapping[str, Tensor]) -> Tensor:
        counts = self.prompt_counts
        if "template_index" in draws:
            index = draws["template_index"].to(counts.device).long()
            if index.shape != counts.shape or bool((index < 0).any() | (index >= counts).any()):
                raise ValueError(f"template_index must be [{len(counts)}] within each class's prompt count")
            return index
        if bool((counts == counts[0]).all()):
            return torch.randint(0, int(counts[0]), (len(counts),)).to(counts.device)
        return (torch.rand(len(counts)) * counts.cpu()).long().clamp(max=counts.cpu() - 1).to(counts.device)

    def _features(self, tokens: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised (text [C, E], image [B, E]) features under the current pass."""
        self._pooled_rows["visual"] = torch.zeros(len(images), dtype=torch.long)
        text = F.normalize(self._encode_tokens(tokens).float(), dim=-1)
        image = F.normalize(self.image_features(images).float(), dim=-1)
        return text, image

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        cfg = self.config
        draws, self._pending = self._pending, {}
        index = self._draw_prompts(draws)
        tokens = self.prompt_tokens[torch.arange(len(index), device=index.device), index]
        self._draws = {k: v for k, v in draws.items() if k.startswith("dropout/")}
        try:
            with self._running(_Pass(cfg.adapter_train_scale, "main", self.training)):
                text, image = self._features(tokens, images)
            logits = self.logit_scale() * image @ text.t()
            scale = draws.get("reg_scale")
            if scale is None:
                scale = torch.rand(1) * cfg.adapter_train_scale
            scale = scale.to(device=images.device, dtype=torch.float32).reshape(())
            with torch.no_grad(), self._running(_Pass(scale, "reg", self.training)):
                text_reg, image_reg = self._features(tokens, images)
        finally:
            self._draws = {}
        ce = F.cross_entropy(logits, labels)
        cos_text = F.cosine_similarity(text, text_reg, dim=-1).mean()
        cos_image = F.cosine_similarity(image, image_reg, dim=-1).mean()
        reg = -cfg.adapter_train_scale_reg * cos_text - cfg.adapter_train_scale_reg * cos_image
        tensors = {"train/logits": logits, "train/text_features": text, "train/image_features": image,
                   "reg/text_features": text_reg, "reg/image_features": image_reg}
        return Objective(total=ce + reg, terms={"ce": ce, "cos_text": cos_text, "cos_image": cos_image, "reg": reg},
                         logits=logits, tensors={k: v.detach() for k, v in tensors.items()})

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        return {"eval/text_features": self.cached_text_features(), "debug/tk_prompts": self.prompt_tokens}
