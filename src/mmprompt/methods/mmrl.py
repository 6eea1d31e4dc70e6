"""MMRL: Multi-Modal Representation Learning (Guo & Gu, CVPR 2025) and MMRL++ (IJCV 2026); official code
yunncheng/MMRL @ 27d8821 (trainers ``MMRL`` and ``MMRLpp``, CLIP in ``clip/model_mmrl.py`` /
``clip/model_mmrlpp.py``).

The CLIP is frozen. K learnable "space tokens" R [K, d_r] live in a space shared by both modalities; for
the k-th entry ``l`` of ``rep_layers`` (1-based block index, block ``l`` is ``resblocks[l - 1]``) a
per-layer map sends R to the text width (T_k) and another to the vision width (V_k). At the first listed
block the K tokens are inserted right after the first token (CLS / BOT) of every sequence; at each later
listed block the tokens coming out of the previous block (positions 1..K) are replaced by the new ones
(MMRL) or blended, ``beta * new + (1 - beta) * previous`` (MMRL++'s PRC). Unlisted blocks carry them
along. The tokens never get a positional embedding. From the first listed block on the text tower's
causal mask covers the longer sequence, and the text feature is read at EOT + K.

The image tower gives two features: the class token (``ln_post`` then the frozen ``visual.proj``) and
the mean of ``ln_post`` of the K tokens through a projection of its own: a random, trainable
``proj_rep`` (MMRL) or ``visual.proj + A B`` with a trainable low-rank A B (MMRL++). Logits use a fixed
scale of 100 (not CLIP's ``logit_scale``): ``L = 100 cos(I, T)``, ``L_rep = 100 cos(I_rep, T)``.

Training: ``alpha CE(L) + (1 - alpha) CE(L_rep) + reg_weight (1 - cos(I, I0)) + reg_weight (1 - cos(T,
T0))`` with I0 / T0 the frozen zero-shot CLIP features of the batch and of the dataset's single template.

Evaluation (separate inference paths, :attr:`inference_paths`): ``base`` is the fusion ``alpha L + (1 -
alpha) L_rep`` (the official test on base classes, few-shot, and the cross-dataset source ImageNet),
``novel`` is the class-token head ``L`` alone (novel classes, cross-dataset targets, domain
generalisation). The protocols choose with :meth:`PromptLearner.protocol_path`.

MMRL++'s SRRA shares one weight matrix per modality over the layers; each layer adds a low-rank residual
``A_k B_k`` (rank ``res_lora_dim``) and has its own bias.

Differences from the official code, deliberate: the official evaluation caches the text features at the
first eval-mode call and never invalidates them; here they are computed per evaluation. The text tower
runs each prompt only up to its EOT (exact under the causal mask: the tokens sit before every EOT;
``encoder.truncate_text=False`` runs the official 77 + K positions). The shared prefix and text chunking of
:class:`~mmprompt.methods.contract.EncoderOptions` are not used: the tokens sit at position 1 of every prompt, so
no position after BOT is shared, and the class prompts are encoded in one batch (as the official code does).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_number
from ..clip.model import CLIP
from .base import MethodConfig, PromptLearner
from .contract import Objective

DEFAULT_TEMPLATE = "a photo of a {}."
LOGIT_SCALE = 100.0
"""The official code's fixed logit scale."""


@dataclasses.dataclass
class MMRLConfig(MethodConfig):
    alpha: float = 0.7
    """Weight of the class-token head: in the loss and in the base-path fusion."""
    reg_weight: float = 1.0
    """Weight of each cosine regulariser (image and text) towards the zero-shot CLIP."""
    n_rep_tokens: int = 5
    """K: the number of representation tokens."""
    rep_layers: list[int] = dataclasses.field(default_factory=lambda: [6, 7, 8, 9, 10, 11, 12])
    """1-based block indices of both towers that receive tokens, increasing."""
    rep_dim: int = 512
    """d_r: the width of the shared representation space."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__.removesuffix("Config").lower()
        self.alpha = check_number(f"{name}.alpha", self.alpha, minimum=0, maximum=1)
        self.reg_weight = check_number(f"{name}.reg_weight", self.reg_weight, minimum=0)
        check_int(f"{name}.n_rep_tokens", self.n_rep_tokens, minimum=1)
        check_int(f"{name}.rep_dim", self.rep_dim, minimum=1)
        layers = self.rep_layers
        if (not isinstance(layers, (list, tuple)) or not layers
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers)):
            raise ValueError(f"{name}.rep_layers must be a non-empty list of block indices, got {layers!r}")
        self.rep_layers = [int(v) for v in layers]
        if self.rep_layers[0] < 1 or any(b <= a for a, b in zip(self.rep_layers, self.rep_layers[1:])):
            raise ValueError(f"{name}.rep_layers must be increasing 1-based block indices, got {self.rep_layers}")

    def check_model(self, clip: CLIP) -> None:
        name = type(self).__name__.removesuffix("Config").lower()
        layers = min(clip.config.text.layers, clip.config.vision.layers)
        if self.rep_layers[-1] > layers:
            scaled = ",".join(str(v) for v in sorted({max(1, math.ceil(v * layers / 12)) for v in self.rep_layers}))
            raise ValueError(f"{name}.rep_layers {self.rep_layers} go beyond the model's {layers} layers (scaled "
                             f"from ViT-B/16's 12: --set 'method.rep_layers=[{scaled}]')")
        v = clip.config.vision
        if not (v.class_token and v.pool == "tok" and v.projection):
            raise ValueError(f"{name} needs an image tower pooled at its class token with a projection "
                             "(the representation tokens sit right after it)")
        if not clip.config.text.start_token:
            raise ValueError(f"{name} needs a text tower with a start token (the tokens are inserted after it)")


@dataclasses.dataclass
class MMRLppConfig(MMRLConfig):
    beta: float = 0.9
    """PRC: weight of the newly projected tokens at later listed blocks (1 - beta: the previous ones)."""
    proj_lora_dim: int = 64
    """Rank of the low-rank update A B of the representation feature's projection."""
    res_lora_dim: int = 4
    """Rank of each layer's SRRA residual."""
    dataset_beta: dict[str, float] = dataclasses.field(default_factory=dict)
    """``beta`` per dataset key the learner is pointed at (the official cross-dataset table sets it per
    target dataset at test time); other datasets use ``beta``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_number("mmrlpp.beta", self.beta, minimum=0, maximum=1)
        if not isinstance(self.dataset_beta, Mapping):
            raise ValueError(f"mmrlpp.dataset_beta must map dataset keys to numbers, got {self.dataset_beta!r}")
        self.dataset_beta = {str(k): check_number(f"mmrlpp.dataset_beta.{k}", v, minimum=0, maximum=1)
                             for k, v in self.dataset_beta.items()}
        check_int("mmrlpp.proj_lora_dim", self.proj_lora_dim, minimum=1)
        check_int("mmrlpp.res_lora_dim", self.res_lora_dim, minimum=1)


_OFFICIAL_KEYS = {"ALPHA": "alpha", "SCALE": "alpha", "REG_WEIGHT": "reg_weight", "N_REP_TOKENS": "n_rep_tokens",
                  "REP_LAYERS": "rep_layers", "REP_DIM": "rep_dim", "BETA": "beta",
                  "PROJ_LORA_DIM": "proj_lora_dim", "RES_LORA_DIM": "res_lora_dim"}


def _from_official(section: str, allowed: tuple[str, ...]) -> Any:  # noqa: ANN401 - a config reader
    def read(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
        """Our config from the official ``TRAINER.<section>`` keys (flat, dotted or nested); other sections
        (``OPTIM``, ``DATASET``, ``TASK``) are ignored here."""
        trainer = official.get(f"TRAINER.{section}")
        if trainer is None and isinstance(official.get("TRAINER"), Mapping):
            trainer = official["TRAINER"].get(section)
        if trainer is None:
            trainer = {k: v for k, v in official.items() if k.isupper() and "." not in k and k != "OPTIM"}
        unknown = sorted(set(trainer) - set(allowed) - {"PREC"})
        if unknown:
            raise ValueError(f"official {section} option(s) {unknown} are not understood; known: {sorted(allowed)}"
                             " and PREC")
        return {_OFFICIAL_KEYS[k]: (list(v) if k == "REP_LAYERS" else v) for k, v in trainer.items() if k in allowed}

    return read


_MMRL_KEYS = ("ALPHA", "SCALE", "REG_WEIGHT", "N_REP_TOKENS", "REP_LAYERS", "REP_DIM")
"""``SCALE`` is the name earlier official configs (before 27d8821) gave ``ALPHA``."""
from_official = _from_official("MMRL", _MMRL_KEYS)
from_official_pp = _from_official("MMRLpp", (*_MMRL_KEYS, "BETA", "PROJ_LORA_DIM", "RES_LORA_DIM"))


class ResidualAligner(nn.Module):
    """One layer's part of MMRL++'s SRRA: a low-rank residual ``A B`` on the shared weight, and a bias."""

    def __init__(self, out_features: int, in_features: int, rank: int, bias: Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, in_features))
        self.bias = nn.Parameter(bias.detach().clone())


class SharedAligner(nn.Module):
    """SRRA: ``x (W + A_k B_k)^T + b_k`` with W shared by every layer k."""

    def __init__(self, in_features: int, out_features: int, layers: int, rank: int) -> None:
        super().__init__()
        base = nn.Linear(in_features, out_features)  # the official init: one fresh Linear, shared
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.residual = nn.ModuleList(
            ResidualAligner(out_features, in_features, rank, base.bias) for _ in range(layers))

    def forward(self, x: Tensor, k: int) -> Tensor:
        r = self.residual[k]
        return F.linear(x, self.weight + r.A @ r.B, r.bias)


class MMRL(PromptLearner):
    """MMRL (see the module docstring). Trainable: ``trainable.rep_tokens``, ``trainable.r2t.{k}``,
    ``trainable.r2v.{k}`` (one Linear per listed block, all starting equal) and ``trainable.proj_rep``."""

    method = "mmrl"
    config: MMRLConfig
    inference_paths = ("base", "novel")

    def build_prompts(self) -> None:
        cfg = self.config
        c = self.clip.config
        self.trainable.rep_tokens = nn.Parameter(torch.randn(cfg.n_rep_tokens, cfg.rep_dim) * 0.02)
        self.build_aligners(cfg.rep_dim, c.text.width, c.vision.width, len(cfg.rep_layers))
        self.build_projection(c.vision.width, c.embed_dim)

    def build_aligners(self, rep_dim: int, text_width: int, vision_width: int, layers: int) -> None:
        """The per-layer maps from the shared space to each tower (one Linear deep-copied per layer)."""
        for name, width in (("r2t", text_width), ("r2v", vision_width)):
            base = nn.Linear(rep_dim, width)
            setattr(self.trainable, name, nn.ModuleList(copy.deepcopy(base) for _ in range(layers)))

    def build_projection(self, vision_width: int, embed_dim: int) -> None:
        """The representation feature's projection: random, not a copy of ``visual.proj``."""
        self.trainable.proj_rep = nn.Parameter(vision_width**-0.5 * torch.randn(vision_width, embed_dim))

    # ----- the pieces the two variants differ in ------------------------------------------------------
    def rep_tokens(self) -> tuple[list[Tensor], list[Tensor]]:
        """The projected tokens of each listed block: text [K, Dt] and visual [K, Dv] lists."""
        r = self.trainable.rep_tokens
        return [layer(r) for layer in self.trainable.r2t], [layer(r) for layer in self.trainable.r2v]

    def rep_projection(self) -> Tensor:
        """[Dv, E]: the projection of the representation feature."""
        return self.trainable.proj_rep

    def renew(self, new: Tensor, previous: Tensor) -> Tensor:
        """The tokens a later listed block sees, from the new projection and the previous block's output."""
        return new.expand_as(previous)

    # ----- towers ---------------------------------------------------------------------------------------
    def _run_blocks(self, x: Tensor, blocks: nn.ModuleList, tokens: list[Tensor], causal: bool) -> Tensor:
        """The blocks on ``x`` [N, L, D] with the tokens inserted / renewed at the listed blocks."""
        k_of = {layer: k for k, layer in enumerate(self.config.rep_layers)}
        first = self.config.rep_layers[0]
        n = self.config.n_rep_tokens
        for i, block in enumerate(blocks):
            k = k_of.get(i + 1)
            if k is not None:
                new = tokens[k].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                middle = new if i + 1 == first else self.renew(new, x[:, 1 : 1 + n])
                rest = x[:, 1:] if i + 1 == first else x[:, 1 + n :]
                x = torch.cat([x[:, :1], middle, rest], dim=1)
            x = block(x, causal=causal)
        return x

    def encode_rep_text(self, text_tokens: list[Tensor]) -> Tensor:
        """Class text features [C, E] (not normalised) with the representation tokens."""
        clip = self.clip
        eot = self.eot
        x = self.token_embeddings
        causal = clip.config.text.causal
        if causal and self.encoder.truncate_text:
            x = x[:, : int(eot.max()) + 1]  # exact: no position attends to later ones
        x = x.to(clip.dtype) + clip.positional_embedding[: x.shape[1]].to(clip.dtype)
        x = self._run_blocks(x, clip.transformer.resblocks, text_tokens, causal)
        x = x[torch.arange(x.shape[0], device=x.device), eot + self.config.n_rep_tokens]
        x = clip.ln_final(x) @ clip.text_projection.to(x.dtype)
        if clip.config.text.proj_bias:
            x = x + clip.text_projection_bias.to(x.dtype)
        return x

    def encode_rep_image(self, images: Tensor, visual_tokens: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Image features (class token, representation tokens), each [B, E], not normalised."""
        visual = self.clip.visual
        x = visual.embed_patches(images)
        if visual.ln_pre is not None:
            x = visual.ln_pre(x)
        x = self._run_blocks(x, visual.transformer.resblocks, visual_tokens, causal=False)
        n = self.config.n_rep_tokens
        cls = visual.ln_post(x[:, 0]) @ visual.proj.to(x.dtype)
        rep = visual.ln_post(x[:, 1 : 1 + n]).mean(dim=1) @ self.rep_projection().to(x.dtype)
        return cls, rep

    # ----- classes, features, logits ------------------------------------------------------------------
    @property
    def template(self) -> str:
        """The dataset's own single template (the official ``CUSTOM_TEMPLATES``)."""
        return self.dataset.template or DEFAULT_TEMPLATE

    def prepare_classes(self, classnames: list[str]) -> None:
        tokens = self.tokenize([self.template.format(name) for name in classnames])
        with torch.no_grad():
            embeddings = self.clip.token_embedding(tokens).float()
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)

    def text_features(self) -> Tensor:
        return self.encode_rep_text(self.rep_tokens()[0])

    def image_features(self, images: Tensor) -> Tensor:
        """The class-token image features [B, E] (the novel path's)."""
        return self.encode_rep_image(images, self.rep_tokens()[1])[0]

    def heads(self, images: Tensor, text_features: Tensor | None = None) -> dict[str, Tensor]:
        """Both heads' logits (``logits``, ``logits_rep``) and the normalised features of a forward."""
        text_tokens, visual_tokens = self.rep_tokens()
        text = self.encode_rep_text(text_tokens) if text_features is None else text_features
        image, image_rep = self.encode_rep_image(images, visual_tokens)
        image = F.normalize(image.float(), dim=-1)
        image_rep = F.normalize(image_rep.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        return {"logits": LOGIT_SCALE * image @ text.t(), "logits_rep": LOGIT_SCALE * image_rep @ text.t(),
                "image": image, "image_rep": image_rep, "text": text,
                "tokens_text": torch.stack(text_tokens), "tokens_visual": torch.stack(visual_tokens)}

    def fuse(self, logits: Tensor, logits_rep: Tensor) -> Tensor:
        alpha = self.config.alpha
        return alpha * logits + (1 - alpha) * logits_rep

    def path_logits(self, out: Mapping[str, Tensor]) -> Tensor:
        """The logits of the current inference path: fusion on ``base``, the class-token head on ``novel``."""
        if self.inference_path == "novel":
            return out["logits"]
        return self.fuse(out["logits"], out["logits_rep"])

    def logits(self, images: Tensor) -> Tensor:
        return self.path_logits(self.heads(images))

    def predict_logits(self, images: Tensor, text_features: Tensor | None) -> Tensor:
        return self.path_logits(self.heads(images, text_features))

    def train_logits(self, images: Tensor) -> Tensor:
        out = self.heads(images)
        return self.fuse(out["logits"], out["logits_rep"])

    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        out = self.heads(images)  # each path's logits are checked through set_inference_path
        return {"logits_rep": out["logits_rep"],
                "debug/rep_tokens_text": out["tokens_text"], "debug/rep_tokens_visual": out["tokens_visual"]}

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        cfg = self.config
        out = self.heads(images)
        teacher_text = self.teacher_text_features([self.template])
        teacher_image = self.teacher_image_features(images)
        ce = F.cross_entropy(out["logits"], labels)
        ce_rep = F.cross_entropy(out["logits_rep"], labels)
        reg_image = 1 - F.cosine_similarity(out["image"], teacher_image, dim=1).mean()
        reg_text = 1 - F.cosine_similarity(out["text"], teacher_text, dim=1).mean()
        total = (cfg.alpha * ce + (1 - cfg.alpha) * ce_rep + cfg.reg_weight * reg_image
                 + cfg.reg_weight * reg_text)
        return Objective(
            total=total, terms={"ce": ce, "ce_rep": ce_rep, "reg_image": reg_image, "reg_text": reg_text},
            logits=self.fuse(out["logits"], out["logits_rep"]).detach(),
            tensors={"teacher/text_features": teacher_text, "teacher/image_features": teacher_image,
                     "student/text_features": out["text"], "student/image_features": out["image"],
                     "student/image_features_rep": out["image_rep"]},
        )

    # ----- checkpoints --------------------------------------------------------------------------------
    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """K and d_r from the saved tokens; the number of listed blocks must match ``rep_layers``."""
        tokens = state.get("trainable.rep_tokens")
        if tokens is None:
            return {}
        return {"n_rep_tokens": int(tokens.shape[0]), "rep_dim": int(tokens.shape[1])}


class MMRLpp(MMRL):
    """MMRL++: SRRA maps (``trainable.r2t`` / ``trainable.r2v``: a shared ``weight`` and per-layer
    ``residual.{k}.A/B/bias``), PRC blending with ``beta``, and ``visual.proj + trainable.proj_A @ trainable.proj_B``
    for the representation feature."""

    method = "mmrlpp"
    config: MMRLppConfig

    def build_aligners(self, rep_dim: int, text_width: int, vision_width: int, layers: int) -> None:
        rank = self.config.res_lora_dim
        self.trainable.r2v = SharedAligner(rep_dim, vision_width, layers, rank)  # official order: visual first
        self.trainable.r2t = SharedAligner(rep_dim, text_width, layers, rank)

    def build_projection(self, vision_width: int, embed_dim: int) -> None:
        rank = self.config.proj_lora_dim
        self.trainable.proj_A = nn.Parameter(torch.empty(vision_width, rank))
        nn.init.kaiming_uniform_(self.trainable.proj_A, a=math.sqrt(5))
        self.trainable.proj_B = nn.Parameter(torch.zeros(rank, embed_dim))

    def rep_tokens(self) -> tuple[list[Tensor], list[Tensor]]:
        r = self.trainable.rep_tokens
        m = len(self.config.rep_layers)
        return [self.trainable.r2t(r, k) for k in range(m)], [self.trainable.r2v(r, k) for k in range(m)]

    def rep_projection(self) -> Tensor:
        return self.clip.visual.proj + self.trainable.proj_A @ self.trainable.proj_B

    @property
    def beta(self) -> float:
        """PRC's weight for the current dataset (``dataset_beta``, else ``beta``)."""
        return self.config.dataset_beta.get(self.dataset.name or "", self.config.beta)

    def renew(self, new: Tensor, previous: Tensor) -> Tensor:
        beta = self.beta
        return beta * new + (1 - beta) * previous

    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        out = super().options_from_state(state)
        if "trainable.proj_A" in state:
            out["proj_lora_dim"] = int(state["trainable.proj_A"].shape[1])
        if "trainable.r2t.residual.0.A" in state:
            out["res_lora_dim"] = int(state["trainable.r2t.residual.0.A"].shape[1])
        return out


OFFICIAL_NAMES = {
    r"representation_learner\.compound_rep_tokens": "trainable.rep_tokens",
    r"representation_learner\.compound_rep_tokens_r2([tv])proj\.(\d+)\.(weight|bias)": r"trainable.r2\1.\2.\3",
    r"image_encoder\.proj_rep": "trainable.proj_rep",
}
"""MMRL's official names (``CustomCLIP.named_parameters()``; the Dassl checkpoint in the folder
``MultiModalRepresentationLearner`` holds the whole model, whose frozen CLIP matches nothing here)."""

OFFICIAL_NAMES_PP = {
    r"representation_learner\.compound_rep_tokens": "trainable.rep_tokens",
    r"representation_learner\.srra_r2([tv])proj\.weight": r"trainable.r2\1.weight",
    r"representation_learner\.srra_r2([tv])proj\.srra\.(\d+)\.(A|B|bias)": r"trainable.r2\1.residual.\2.\3",
    r"image_encoder\.(A|B)": r"trainable.proj_\1",
}
"""MMRL++'s official names (Dassl folder ``MultiModalPromptLearner``)."""
