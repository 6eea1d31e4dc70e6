"""CLIP-LoRA: low-rank few-shot adaptation of CLIP (Zanella & Ben Ayed, CVPR Workshops 2024; official code
MaxZanella/CLIP-LoRA @ 358f0d7, ``lora.py`` / ``loralib/``).

The CLIP stays frozen and the text input is the fixed prompt ``"a photo of a {class}."``. Each adapted
attention projection (``q``, ``k``, ``v`` and optionally ``o``, the output projection) of each selected
block gets a trainable low-rank update ``dW = s B A`` (A [r, d], Kaiming-uniform; B [d, r], zeros; the
scale ``s = alpha / sqrt(r)``, not ``alpha / r``). The updates are the CLIP's weight-space insertion point
(:meth:`weight_adapters`): no copy of CLIP is patched, and :meth:`merge_weight_adapters` folds them into the
weights for deployment.

* Projection: ``y = x W0^T + b + s * drop(x) A^T B^T`` in training (inverted dropout on the branch's input
  only), ``y = x (W0 + s B A)^T + b`` in evaluation.
* With ``dropout_rate`` exactly 0 the official layer takes another branch: the forward value is the same,
  but the official code removes ``s B A`` from the merged weight in place, where autograd cannot see it, so
  the gradient sent to the projection's input uses W0 alone. ``official_dropout0_gradient`` (default on)
  reproduces that: the branch's input is detached (``s * stopgrad(x) A^T B^T``); A and B get their usual
  gradients.
* Blocks: the official 0-based tables written for 12 layers (24 for the ViT-L/14 image tower), indices
  beyond a tower's depth skipped. The image tower's table depends on the backbone (``vision_table``;
  ``auto`` reads it from the CLIP: 24 layers = ViT-L/14, patch 32 = ViT-B/32, else ViT-B/16).
* Logits: ``100 * cos`` (a constant 100, not the CLIP's logit scale). Training text features go through
  the LoRA text encoder (``encoder`` text / both) or are the frozen zero-shot classifier of the plain CLIP
  (``vision``); with ``text`` the image features carry no gradient. The loss is plain cross-entropy.
* The official optimiser is AdamW (lr 2e-4, weight decay 1e-2 on A and B) under a per-iteration cosine schedule
  over 500 x shots iterations (eta_min 1e-6, no warm-up), batch 32. The preset ``clip_lora_fs`` has AdamW with
  those values; its cosine is the engine's per-epoch one (no warm-up, eta_min 0) over as many epochs as give the
  official number of iterations at 16 shots (a deliberate difference: the rate is updated once per epoch).

Deliberate differences (D in the spec): fp32 rather than the official fp16 CLIP under autocast (``precision`` is
a run option); the update is kept apart from the weights in evaluation instead of being added into them and
subtracted again (the same numbers to rounding; :meth:`merge_weight_adapters` merges for deployment); any exact
attention kernel.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_bool, check_int, check_number
from ..clip.config import CLIPConfig
from ..clip.model import CLIP, AttentionDeltas, BlockWeightDeltas
from .base import MethodConfig, PromptLearner
from .contract import Objective

TEMPLATE = "a photo of a {}."
ENCODERS = ("text", "vision", "both")
PARAMS = ("q", "k", "v", "o")
PROJ_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
"""Our projection key -> the official LinearLoRA attribute of ``PlainMultiheadAttentionLoRA``."""
POSITIONS = ("bottom", "mid", "up", "half-up", "half-bottom", "all", "top3")
"""The positions the official command line accepts."""

_TWELVE = {"bottom": range(0, 4), "mid": range(4, 8), "up": range(8, 12), "half-up": range(6, 12),
           "half-bottom": range(0, 6), "all": range(0, 12), "top3": range(9, 12)}
TEXT_TABLE: dict[str, list[int]] = {k: list(v) for k, v in _TWELVE.items()}
VISION_TABLES: dict[str, dict[str, list[int]]] = {
    "ViT-B/16": dict(TEXT_TABLE),
    "ViT-B/32": {k: v for k, v in TEXT_TABLE.items() if k != "top3"},
    "ViT-L/14": {"half-up": list(range(12, 24)), "half-bottom": list(range(0, 12)), "all": list(range(0, 24))},
}
"""The official image-tower tables per backbone (a position missing from a backbone's table is an error)."""


@dataclasses.dataclass
class CLIPLoRAConfig(MethodConfig):
    encoder: str = "both"
    """Towers that get LoRA: ``text``, ``vision`` or ``both``."""
    position: str = "all"
    """Blocks, from the official tables: bottom, mid, up, half-up, half-bottom, all, top3."""
    params: list[str] = dataclasses.field(default_factory=lambda: ["q", "k", "v"])
    """Adapted projections, a subset of q, k, v, o (o: the attention's output projection)."""
    r: int = 2
    """The rank."""
    alpha: float = 1.0
    """The scale's numerator: s = alpha / sqrt(r)."""
    dropout_rate: float = 0.25
    """Dropout on the LoRA branch's input, training only."""
    official_dropout0_gradient: bool = True
    """With dropout_rate 0: the official merged branch's gradient (none through the branch's input; see the
    module docstring). False: the plain gradient."""
    dropout_masks: bool = True
    """False: the branch's dropout is the identity even in training (the reference files, whose masks
    cannot be matched, were computed so); dropout_rate still selects the official branch."""
    vision_table: str = "auto"
    """Which official image-tower table: ViT-B/16, ViT-B/32, ViT-L/14, or auto (from the CLIP's shape)."""
    template: str = TEMPLATE
    """The prompt; ``{}`` is the class name (the official datasets all use "a photo of a {}.")."""
    logit_scale: float = 100.0
    """The constant logit scale (the official main.py sets 100)."""
    official_branch: bool = False
    """Compute each update as the official layer does, ``drop(x) @ (s B A)^T``: a full d x d product per
    projection instead of two rank-r ones (the same numbers; the speed reference of ``mmprompt speed``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(f"clip_lora.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"clip_lora.position must be one of {POSITIONS}, got {self.position!r}")
        params = [self.params] if isinstance(self.params, str) else self.params
        if not isinstance(params, Sequence) or not params or any(p not in PARAMS for p in params):
            raise ValueError(f"clip_lora.params must be a non-empty list of {PARAMS}, got {self.params!r}")
        self.params = [p for p in PARAMS if p in params]
        check_int("clip_lora.r", self.r, minimum=1)
        self.alpha = check_number("clip_lora.alpha", self.alpha, above=0)
        self.dropout_rate = check_number("clip_lora.dropout_rate", self.dropout_rate, minimum=0)
        if self.dropout_rate >= 1:
            raise ValueError(f"clip_lora.dropout_rate must be below 1, got {self.dropout_rate}")
        check_bool("clip_lora.official_dropout0_gradient", self.official_dropout0_gradient)
        check_bool("clip_lora.dropout_masks", self.dropout_masks)
        check_bool("clip_lora.official_branch", self.official_branch)
        if self.vision_table not in ("auto", *VISION_TABLES):
            raise ValueError(f"clip_lora.vision_table must be auto or one of {tuple(VISION_TABLES)}, "
                             f"got {self.vision_table!r}")
        if not isinstance(self.template, str) or "{}" not in self.template:
            raise ValueError(f"clip_lora.template must be a string with {{}} for the class name, got {self.template!r}")
        self.logit_scale = check_number("clip_lora.logit_scale", self.logit_scale, above=0)

    @property
    def scaling(self) -> float:
        """s = alpha / sqrt(r) (the official scale; not alpha / r)."""
        return self.alpha / math.sqrt(self.r)

    def backbone(self, clip: CLIP) -> str:
        """The official image-tower table this CLIP uses."""
        if self.vision_table != "auto":
            return self.vision_table
        v = clip.config.vision
        if v.layers == 24:
            return "ViT-L/14"
        return "ViT-B/32" if v.patch_size == 32 else "ViT-B/16"

    def blocks(self, clip: CLIP) -> dict[str, list[int]]:
        """The adapted 0-based block indices per tower (``text``, ``visual``), beyond-depth ones dropped."""
        out: dict[str, list[int]] = {}
        if self.encoder in ("text", "both"):
            out["text"] = [i for i in TEXT_TABLE[self.position] if i < clip.config.text.layers]
        if self.encoder in ("vision", "both"):
            table = VISION_TABLES[self.backbone(clip)]
            if self.position not in table:
                raise ValueError(f"clip_lora.position {self.position!r} is not in the official {self.backbone(clip)} "
                                 f"image-tower table (it has {sorted(table)})")
            out["visual"] = [i for i in table[self.position] if i < clip.config.vision.layers]
        return out

    def check_model(self, clip: CLIP) -> None:
        self.blocks(clip)


class LoRADelta(nn.Module):
    """One projection's low-rank update ``s * drop(x) A^T B^T`` (a :class:`~mmprompt.clip.model.WeightDelta`)."""

    def __init__(self, width: int, r: int, scaling: float, dropout: float, detach_input: bool,
                 full_product: bool = False) -> None:
        super().__init__()
        self.full_product = full_product
        self.w_lora_A = nn.Parameter(torch.empty(r, width))
        self.w_lora_B = nn.Parameter(torch.zeros(width, r))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))  # U(-1/sqrt(d), 1/sqrt(d))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.detach_input = detach_input

    def forward(self, x: Tensor) -> Tensor:
        if self.detach_input:
            x = x.detach()
        if self.dropout is not None:
            x = self.dropout(x)
        a, b = self.w_lora_A, self.w_lora_B
        if not torch.is_autocast_enabled(x.device.type):
            a, b = a.to(x.dtype), b.to(x.dtype)
        if self.full_product:  # the official LinearLoRA: x @ (B A)^T * s
            return F.linear(x, b @ a) * self.scaling
        return F.linear(F.linear(x, a), b) * self.scaling

    def delta_weight(self) -> Tensor:
        """``s B A`` [d, d]."""
        return (self.w_lora_B @ self.w_lora_A) * self.scaling


def from_official(official: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    """Our config from the official argparse options (``run_utils.py``); data, optimiser and I/O options
    (dataset, shots, lr, n_iters, batch_size, seed, paths) do not change the model and are ignored. A
    reference case whose ``lora_dropout_masks`` is ``off`` ran with identity masks."""
    keys = {"encoder": "encoder", "position": "position", "params": "params", "r": "r", "alpha": "alpha",
            "dropout_rate": "dropout_rate"}
    ignored = {"seed", "root_path", "dataset", "shots", "lr", "n_iters", "batch_size", "save_path", "filename",
               "eval_only", "backbone"}
    unknown = sorted(set(official) - set(keys) - ignored)
    if unknown:
        raise ValueError(f"official CLIP-LoRA option(s) {unknown} are not understood; known: {sorted(keys)}")
    values: dict[str, Any] = {keys[k]: v for k, v in official.items() if k in keys}
    if "params" in values:
        values["params"] = list(values["params"])
    if "backbone" in official:
        values["vision_table"] = str(official["backbone"])
    if case.get("lora_dropout_masks") == "off":
        values["dropout_masks"] = False
    return values


class CLIPLoRA(PromptLearner):
    method = "clip_lora"
    config: CLIPLoRAConfig

    def build_prompts(self) -> None:
        cfg = self.config
        widths = {"text": self.clip.config.text.width, "visual": self.clip.config.vision.width}
        dropout = cfg.dropout_rate if cfg.dropout_masks else 0.0
        detach = cfg.dropout_rate == 0 and cfg.official_dropout0_gradient
        self.lora_blocks = cfg.blocks(self.clip)
        for tower, indices in self.lora_blocks.items():
            setattr(self.trainable, tower, nn.ModuleDict({
                str(i): nn.ModuleDict({PROJ_NAMES[p]: LoRADelta(widths[tower], cfg.r, cfg.scaling, dropout, detach,
                                                                 cfg.official_branch)
                                       for p in cfg.params})
                for i in indices}))
        self._text_cache: tuple[tuple[Any, ...], Tensor] | None = None

    @classmethod
    def options_from_state(cls, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """The rank, the encoder and the projections the saved matrices fix."""
        towers, params, rank = set(), set(), None
        for name, value in state.items():
            m = re.fullmatch(r"trainable\.(text|visual)\.\d+\.(q_proj|k_proj|v_proj|proj)\.w_lora_A", name)
            if m:
                towers.add(m.group(1))
                params.add(next(k for k, v in PROJ_NAMES.items() if v == m.group(2)))
                rank = int(value.shape[0])
        if rank is None:
            return {}
        encoder = "both" if len(towers) == 2 else ("text" if "text" in towers else "vision")
        return {"r": rank, "encoder": encoder, "params": [p for p in PARAMS if p in params]}

    def prepare_classes(self, classnames: list[str]) -> None:
        tokens = self.tokenize([self.config.template.format(n) for n in classnames])
        with torch.no_grad():
            embeddings = self.clip.token_embedding(tokens).float()
        self.register_buffer("eot", self.clip.text_pool_index(tokens), persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)
        self._text_cache = None

    # ----- the weight-space adapters -------------------------------------------------------------------
    def weight_adapters(self) -> tuple[BlockWeightDeltas | None, BlockWeightDeltas | None]:
        out: list[BlockWeightDeltas | None] = []
        for tower, layers in (("visual", self.clip.config.vision.layers), ("text", self.clip.config.text.layers)):
            if tower not in self.lora_blocks:
                out.append(None)
                continue
            modules = getattr(self.trainable, tower)
            slots: list[AttentionDeltas | None] = [None] * layers
            for i in self.lora_blocks[tower]:
                block = modules[str(i)]
                slots[i] = {p: block[PROJ_NAMES[p]] for p in self.config.params}
            out.append(slots)
        return out[0], out[1]

    # ----- features and logits -------------------------------------------------------------------------
    def logit_scale(self) -> Tensor:
        return torch.tensor(self.config.logit_scale, device=self.eot.device)

    def text_features(self) -> Tensor:
        """Class text features of the template through the (LoRA) text encoder."""
        if torch.is_grad_enabled() and "text" in self.lora_blocks:
            return self.encode_text(self.token_embeddings, self.eot)
        return self.cached_text_features()

    def cached_text_features(self) -> Tensor:
        """Without gradients; re-encoded only when the classes, a LoRA matrix, the merge state, the device
        or the autocast state changed."""
        device = self.token_embeddings.device
        autocast = torch.is_autocast_enabled(device.type)
        key = (tuple(self.classnames), device, autocast and torch.get_autocast_dtype(device.type),
               self.weights_merged, tuple((p.data_ptr(), p._version) for p in self.trainable_parameters()))
        cached = self._text_cache
        if cached is not None and cached[0] == key:
            if torch.is_inference_mode_enabled() or not cached[1].is_inference():
                return cached[1]
        with torch.no_grad():
            features = self.encode_text(self.token_embeddings, self.eot)
        self._text_cache = (key, features)
        return features

    def zero_shot_classifier(self) -> Tensor:
        """Z [C, E]: the plain CLIP's normalised template feature per class (the official clip_classifier)."""
        return self.teacher_text_features([self.config.template])

    def objective(self, images: Tensor, labels: Tensor) -> Objective:
        """Cross-entropy of ``100 * cos`` (the official training iteration)."""
        encoder = self.config.encoder
        tensors: dict[str, Tensor] = {}
        if encoder == "vision":
            text = self.zero_shot_classifier()
        else:
            text = self.text_features()
            tensors["debug/text_features"] = text
        if encoder == "text":
            with torch.no_grad():
                image = self.image_features(images)
        else:
            image = self.image_features(images)
        tensors["debug/image_features"] = image
        logits = self.logits_from(image, text)
        ce = F.cross_entropy(logits.float(), labels)
        tensors["train_logits"] = logits
        return Objective(total=ce, terms={"ce": ce}, logits=logits, tensors=tensors)

    @torch.no_grad()
    def eval_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """The plain CLIP's logits, the logits right after insertion (the official init: B = 0), the zero-shot
        logits against Z, and Z itself."""
        names = [self.config.template.format(n) for n in self.classnames_clean()]
        plain_text = self.clip.encode_text(self.tokenize(names))
        plain_image = self.clip.encode_image(images)
        fresh = CLIPLoRA(self.clip, self.classnames, self.config, self.tokenizer, dataset=self.dataset,
                         encoder=self.encoder).to(self.eot.device).eval()
        z = self.zero_shot_classifier()
        return {
            "plain_logits": self.logits_from(plain_image, plain_text),
            "replaced_logits": fresh.logits(images),
            "zs_logits": self.logits_from(plain_image, z),
            "debug/text_classifier": z,
        }

    def classnames_clean(self) -> list[str]:
        return [str(c).replace("_", " ") for c in self.classnames]


OFFICIAL_NAMES = {
    r"transformer\.resblocks\.(\d+)\.attn\.(q_proj|k_proj|v_proj|proj)\.(w_lora_[AB])": r"trainable.text.\1.\2.\3",
    r"visual\.transformer\.resblocks\.(\d+)\.attn\.(q_proj|k_proj|v_proj|proj)\.(w_lora_[AB])":
        r"trainable.visual.\1.\2.\3",
}
"""Official names: the CLIP's ``named_parameters()`` after ``apply_lora``."""


def read_official(path: str | Path, clip_config: CLIPConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An official ``save_lora`` file (``{'weights': {'layer_<n>': {'q_proj': {'w_lora_A', 'w_lora_B'}, ...}},
    'metadata': {r, alpha, encoder, params, position}}``, usually ``<save_path>/<backbone>/<dataset>/<shots>shots/
    seed<seed>/lora_weights.pt``; a folder is searched for that one file) -> our trainable state and config
    values. ``layer_<n>`` counts the replaced blocks in the official order: the text tower's, then the image
    tower's, each in block order, only blocks that exist in ``clip_config``'s towers; the backbone (for the
    image-tower table) is read from the folder name (vitb16, vitb32, vitl14) when present, else from the
    architecture."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("*.pt"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected one official CLIP-LoRA file (<...>/lora_weights.pt), "
                                    f"found {[str(f.relative_to(path)) for f in found] or 'none'}")
        path = found[0]
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a torch file with weights_only=True ({exc})") from exc
    if not isinstance(data, Mapping) or not {"weights", "metadata"} <= set(data):
        found_keys = sorted(data)[:10] if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{path}: not an official CLIP-LoRA save_lora file (expected keys 'weights' and "
                         f"'metadata', found {found_keys})")
    meta = dict(data["metadata"])
    missing = sorted({"r", "alpha", "encoder", "params", "position"} - set(meta))
    if missing:
        raise ValueError(f"{path}: field 'metadata' lacks {missing}")
    v = clip_config.vision
    backbone = "ViT-L/14" if v.layers == 24 else ("ViT-B/32" if v.patch_size == 32 else "ViT-B/16")
    for part in path.parts:
        backbone = {"vitb16": "ViT-B/16", "vitb32": "ViT-B/32", "vitl14": "ViT-L/14"}.get(part, backbone)
    values = {"r": int(meta["r"]), "alpha": meta["alpha"], "encoder": meta["encoder"], "params": list(meta["params"]),
              "position": meta["position"], "vision_table": backbone}
    cfg = CLIPLoRAConfig(**values)
    order: list[tuple[str, int]] = []
    if cfg.encoder in ("text", "both"):
        order += [("text", i) for i in TEXT_TABLE[cfg.position] if i < clip_config.text.layers]
    if cfg.encoder in ("vision", "both"):
        order += [("visual", i) for i in VISION_TABLES[backbone].get(cfg.position, []) if i < v.layers]
    weights = data["weights"]
    state: dict[str, Tensor] = {}
    for n in range(len(weights)):
        key = f"layer_{n}"
        if key not in weights or len(weights) != len(order):
            raise ValueError(f"{path}: field 'weights' has {sorted(weights)}; the metadata ({cfg.encoder}, "
                             f"{cfg.position}, {backbone}) gives {len(order)} layers")
        tower, i = order[n]
        for proj, mats in weights[key].items():
            for mat in ("w_lora_A", "w_lora_B"):
                state[f"trainable.{tower}.{i}.{proj}.{mat}"] = mats[mat].float()
    return state, values
