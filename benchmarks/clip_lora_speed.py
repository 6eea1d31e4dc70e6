"""CLIP-LoRA training step: mmprompt (the weight-space insertion point, unmerged) against the official computation,
interleaved in one run.

The official computation is written here from the spec (successors/clip_lora.md) as the official code runs it:
every adapted block's ``nn.MultiheadAttention`` replaced by four separate linear maps (``q_proj``, ``k_proj``,
``v_proj``, ``proj``) copied from the packed weights, each adapted one computing ``x W0^T + b + s drop(x)
(B A)^T`` (a full d x d product for the update), SDPA over the heads, every class prompt over the full 77-token
context. mmprompt runs its default path: the packed in-projection plus two rank-r products per update, each
prompt up to its EOT with the shared prefix once.

Each repeat times one step of each (forward of both towers, 100 * cos, cross-entropy, backward, AdamW), in
alternating order; the figure is the median of the per-repeat ratios official / ours (> 1: ours is faster).
Both start from the same matrices, and their evaluation logits are compared first.

    PYTHONPATH=src python benchmarks/clip_lora_speed.py --arch ViT-B/16 --batch 32 --classes 47 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmprompt.bench import synthetic_classnames
from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.methods import EncoderOptions, create_learner


class OfficialLoRALinear(nn.Module):
    """``x W0^T + b + s * drop(x) @ (B A)^T`` with W0, b frozen copies (the official LinearLoRA, dropout > 0)."""

    def __init__(self, weight: Tensor, bias: Tensor, a: Tensor | None, b: Tensor | None, scaling: float,
                 dropout: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.lora = a is not None
        if self.lora:
            self.w_lora_A = nn.Parameter(a.detach().clone())
            self.w_lora_B = nn.Parameter(b.detach().clone())
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.lora:
            return out
        return out + torch.matmul(self.dropout(x), (self.w_lora_B @ self.w_lora_A).t()) * self.scaling


class OfficialAttention(nn.Module):
    """PlainMultiheadAttentionLoRA: separate q/k/v/proj maps, SDPA."""

    def __init__(self, block: nn.Module, deltas: dict[str, Any] | None, scaling: float, dropout: float) -> None:
        super().__init__()
        attn = block.attn
        d = attn.out_proj.in_features
        self.heads = attn.heads
        names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
        weights = {"q": (attn.in_proj_weight[:d], attn.in_proj_bias[:d]),
                   "k": (attn.in_proj_weight[d:2 * d], attn.in_proj_bias[d:2 * d]),
                   "v": (attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:]),
                   "o": (attn.out_proj.weight, attn.out_proj.bias)}
        for key, (w, b) in weights.items():
            delta = (deltas or {}).get(key)
            a_, b_ = (delta.w_lora_A, delta.w_lora_B) if delta is not None else (None, None)
            setattr(self, names[key], OfficialLoRALinear(w, b, a_, b_, scaling, dropout))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        n, length, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(n, length, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class OfficialCLIPLoRA(nn.Module):
    """The official model after ``apply_lora``: the same frozen CLIP, attention replaced where adapted."""

    def __init__(self, learner: Any, dropout: float) -> None:
        super().__init__()
        self.clip = learner.clip
        vision, text = learner.weight_adapters()
        s = learner.config.scaling
        self.visual_attn = nn.ModuleList(OfficialAttention(b, (vision or [None] * 99)[i], s, dropout)
                                         for i, b in enumerate(self.clip.visual.transformer.resblocks))
        self.text_attn = nn.ModuleList(OfficialAttention(b, (text or [None] * 99)[i], s, dropout)
                                       for i, b in enumerate(self.clip.transformer.resblocks))

    def tower(self, blocks: nn.ModuleList, attns: nn.ModuleList, x: Tensor, mask: Tensor | None) -> Tensor:
        for block, attn in zip(blocks, attns, strict=True):
            x = x + attn(block.ln_1(x), mask)
            x = x + block.mlp(block.ln_2(x))
        return x

    def encode_image(self, images: Tensor) -> Tensor:
        v = self.clip.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
        x = self.tower(v.transformer.resblocks, self.visual_attn, v.ln_pre(x), None)
        return v.ln_post(x[:, 0]) @ v.proj

    def encode_text(self, tokens: Tensor) -> Tensor:
        c = self.clip
        x = c.token_embedding(tokens) + c.positional_embedding
        length = x.shape[1]
        mask = torch.full((length, length), float("-inf"), device=x.device).triu(1)
        x = self.tower(c.transformer.resblocks, self.text_attn, x, mask.to(x.dtype))
        x = c.ln_final(x[torch.arange(x.shape[0], device=x.device), tokens.argmax(-1)])
        return x @ c.text_projection

    def logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        img = F.normalize(self.encode_image(images).float(), dim=-1)
        txt = F.normalize(self.encode_text(tokens).float(), dim=-1)
        return 100 * img @ txt.t()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="ViT-B/16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=47, help="class prompts per step (DTD: 47)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--full-text", action="store_true",
                        help="ours also over the full 77-token context, every position of every prompt (isolates "
                             "the attention / low-rank part of the difference)")
    parser.add_argument("--json", default="", help="write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = CLIP(get_config(args.arch)).to(device).eval().requires_grad_(False)
    names = synthetic_classnames(args.classes, 0)
    encoder = EncoderOptions(truncate_text=False, share_text_prefix=False) if args.full_text else None
    learner = create_learner("clip_lora", clip, names, {}, encoder=encoder).to(device)
    with torch.no_grad():  # B starts at 0: give it values so that the update is not trivially zero
        for p in learner.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
    official = OfficialCLIPLoRA(learner, learner.config.dropout_rate).to(device)
    tokens = learner.tokenize([learner.config.template.format(n.replace("_", " ")) for n in names])
    size = clip.config.vision.image_size
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    with torch.no_grad():  # the same model: evaluation logits (no dropout) agree
        learner.eval()
        official.eval()
        ours_logits, official_logits = learner(images), official.logits(images, tokens)
        max_rel = float((ours_logits - official_logits).abs().max() / official_logits.abs().max())
    learner.train()
    official.train()
    opt_ours = torch.optim.AdamW(learner.trainable_parameters(), lr=2e-4, weight_decay=1e-2)
    opt_official = torch.optim.AdamW([p for p in official.parameters() if p.requires_grad], lr=2e-4,
                                     weight_decay=1e-2)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def step_ours() -> float:
        with autocast():
            loss = learner(images, labels).total
        opt_ours.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_ours)
        scaler.update()
        return float(loss.detach())

    def step_official() -> float:
        with autocast():
            loss = F.cross_entropy(official.logits(images, tokens), labels)
        opt_official.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_official)
        scaler.update()
        return float(loss.detach())

    def timed(fn: Any) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    ours_t, official_t, ratios = [], [], []
    for rep in range(args.warmup + args.reps):
        pair = (timed(step_ours), timed(step_official)) if rep % 2 == 0 else tuple(
            reversed((timed(step_official), timed(step_ours))))
        if rep >= args.warmup:
            ours_t.append(pair[0])
            official_t.append(pair[1])
            ratios.append(pair[1] / pair[0])
    result = {
        "what": "CLIP-LoRA training step (both towers, r 2, q/k/v of all blocks, dropout 0.25, AdamW): mmprompt "
                "default path (weight-space insertion point, unmerged) vs the official computation (separate "
                "q/k/v/proj linear maps, update as a full d x d product, 77-token prompts), interleaved",
        "ours_text": "full 77-token context" if args.full_text else "default (up to each EOT, shared prefix once)",
        "arch": args.arch, "batch": args.batch, "classes": args.classes, "precision": args.precision,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "reps": args.reps, "warmup": args.warmup,
        "trainable": sum(p.numel() for p in learner.trainable_parameters()),
        "eval_logits_max_rel_diff": max_rel,
        "ours_step_s_median": statistics.median(ours_t), "official_step_s_median": statistics.median(official_t),
        "ratio_official_over_ours_median": statistics.median(ratios),
        "ratios": [round(r, 4) for r in ratios],
    }
    assert math.isfinite(result["ratio_official_over_ours_median"])
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
