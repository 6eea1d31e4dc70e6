#!/usr/bin/env python
"""Pretrain the tiny demo CLIP shipped as ``src/mmprompt/assets/demo_clip.safetensors``.

Contrastive image-text pretraining (symmetric InfoNCE with a learnable temperature) on an endless stream
of rendered shapes (:data:`mmprompt.demo.render.PRETRAIN_STYLE`: centred, on neutral backgrounds) with
compositional captions. Most shapes are filled (plain, striped or dotted) and captioned like "a photo of a
large striped red star on a dark background."; some are hollow outlines, always captioned as such ("an
outline of a red star.", "a line drawing of a ..."). A caption names the colour, the shape and whether it
is an outline, and sometimes the size, the pattern and the background; an image counts as a positive
for every caption of the batch that is true of it.

Deterministic: seeded numpy data stream, ``torch.manual_seed``, ``torch.use_deterministic_algorithms``
and one CPU thread, so a rerun on the same machine and library versions writes the same bytes (compare
the SHA-256 printed at the end with the one in ``demo_clip.json``).

Only the rows of the token embedding for words the captions use are trained; the other rows keep their
seeded random initialisation (the vocabulary stays CLIP's 49408 tokens, for the real tokenizer).

    python scripts/pretrain_demo_clip.py                      # writes src/mmprompt/assets/demo_clip.*
    python scripts/pretrain_demo_clip.py --steps 30 --out-dir /tmp/x   # a short check of the same code
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from mmprompt.clip.config import CLIPConfig, TextConfig, VisionConfig
from mmprompt.clip.model import CLIP
from mmprompt.clip.tokenizer import get_tokenizer
from mmprompt.clip.transforms import EvalTransform
from mmprompt.demo.render import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    PRETRAIN_STYLE,
    SHAPES,
    SIZES,
    Scene,
    render_scene,
    sample_scene,
)
from mmprompt.demo.world import DEMO_TEMPLATE, demo_classnames, iter_demo_split

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "mmprompt" / "assets"

CONFIG = CLIPConfig(
    embed_dim=64,
    vision=VisionConfig(width=128, layers=4, patch_size=8, image_size=32),
    text=TextConfig(width=64, layers=4, context_length=32),
    activation="quick_gelu",
)

# ------------------------------------------------------------------------------------------------ captions
TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a photo of a {}.", 4.0),
    ("a picture of a {}.", 1.0),
    ("an image of a {}.", 1.0),
    ("a rendering of a {}.", 1.0),
    ("a drawing of a {}.", 1.0),
    ("a {}.", 1.0),
    ("{}.", 0.5),
    ("itap of a {}.", 0.5),
    ("a bad photo of the {}.", 0.5),
    ("a origami {}.", 0.5),
    ("a {} in a video game.", 0.5),
    ("art of the {}.", 0.5),
)
OUTLINE_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("an outline of a {}.", 2.0),
    ("a line drawing of a {}.", 1.0),
    ("the outline of a {}.", 1.0),
    ("a photo of a hollow {}.", 1.0),
    ("a hollow {}.", 1.0),
    ("a photo of a {} outline.", 1.0),
)
OUTLINE_TEMPLATE = "an outline of a {}."
FILLER: tuple[str, ...] = (
    "this", "is", "my", "new", "nice", "look", "at", "here", "we", "see", "the", "very", "good", "old",
    "cool", "simple", "image", "picture", "shape", "icon", "one", "more", "another", "just", "some", "photo",
    "of", "a", "and", "with", "in", "it", "for", "x",
)
ATTRS = ("colour", "shape", "size", "pattern", "background", "outline")
VALUES: dict[str, tuple] = {
    "colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "pattern": PATTERNS,
    "background": tuple(BACKGROUNDS), "outline": (False, True),
}


@dataclass(frozen=True)
class CaptionStyle:
    size_p: float = 0.5
    """Probability of naming the size (when it is not medium)."""
    pattern_p: float = 0.6
    """Probability of naming the pattern (when it is not plain)."""
    background_p: float = 0.35
    filler_p: float = 0.2
    """Probability of a prefix of 1-14 random filler words (teaches robustness to long prompts)."""


def make_caption(scene: Scene, rng: np.random.Generator, style: CaptionStyle = CaptionStyle()) -> tuple[str, list[int]]:
    """A caption of ``scene`` and the attribute indices it names ([6], -1 where not named)."""
    named = {"colour": scene.colour, "shape": scene.shape, "outline": scene.outline}
    words = []
    if scene.size != "medium" and rng.random() < style.size_p:
        words.append(scene.size)
        named["size"] = scene.size
    if scene.pattern != "plain" and rng.random() < style.pattern_p:
        words.append(scene.pattern)
        named["pattern"] = scene.pattern
    words += [scene.colour, scene.shape]
    phrase = " ".join(words)
    if rng.random() < style.background_p:
        phrase += f" on a {scene.background} background"
        named["background"] = scene.background
    templates = OUTLINE_TEMPLATES if scene.outline else TEMPLATES
    weights = np.array([w for _, w in templates])
    template = templates[int(rng.choice(len(templates), p=weights / weights.sum()))][0]
    caption = template.format(phrase)
    if rng.random() < style.filler_p:
        n = int(rng.integers(1, 15))
        n = min(n, CONFIG.text.context_length - 6 - len(caption.split()))  # room for multi-token words
        caption = " ".join(FILLER[int(i)] for i in rng.integers(len(FILLER), size=max(n, 0))) + " " + caption
    attrs = [VALUES[a].index(named[a]) if a in named else -1 for a in ATTRS]
    return caption, attrs


def lexicon() -> list[str]:
    """Every word the captions (and the demo's prompts) can contain."""
    words = set(FILLER) | {"on", "a", "background", "x"}
    for template, _ in TEMPLATES + OUTLINE_TEMPLATES:
        words |= set(template.replace("{}", " ").replace(".", " ").split())
    for attr in ATTRS[:-1]:
        words |= set(VALUES[attr])
    return sorted(words)


# ------------------------------------------------------------------------------------------------ data
class Stream:
    """The endless seeded stream of (image, caption) batches."""

    def __init__(self, seed: int, batch_size: int, outline_p: float) -> None:
        self.rng = np.random.default_rng(seed)
        self.batch_size = batch_size
        self.outline_p = outline_p
        self.tokenizer = get_tokenizer()
        self.transform = EvalTransform(CONFIG.vision.image_size)
        ids = {0, 49406, 49407}  # padding, SOT, EOT
        for word in lexicon():
            ids |= set(self.tokenizer.encode(word))
        ids |= set(self.tokenizer.encode("."))
        self.vocab = torch.tensor(sorted(ids))  # [V] the token ids that train
        self.remap = torch.full((CONFIG.text.vocab_size,), -1, dtype=torch.long)
        self.remap[self.vocab] = torch.arange(len(self.vocab))

    def tokens(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Compact token indices [B, L] (into ``vocab``) and EOT positions [B]."""
        tok = self.tokenizer(captions, context_length=CONFIG.text.context_length)
        eot = tok.argmax(dim=-1)
        compact = self.remap[tok]
        if (compact < 0).any():
            raise RuntimeError("a caption uses a token outside the training lexicon")
        return compact, eot

    def batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        images, captions, scene_attrs, caption_attrs = [], [], [], []
        for _ in range(self.batch_size):
            scene = sample_scene(self.rng, outline_p=self.outline_p)
            images.append(self.transform(render_scene(scene, PRETRAIN_STYLE, self.rng, CONFIG.vision.image_size)))
            caption, named = make_caption(scene, self.rng)
            captions.append(caption)
            scene_attrs.append([VALUES[a].index(getattr(scene, a)) for a in ATTRS])
            caption_attrs.append(named)
        tok, eot = self.tokens(captions)
        return torch.stack(images), tok, eot, torch.tensor(scene_attrs), torch.tensor(caption_attrs)


def positives(scene_attrs: Tensor, caption_attrs: Tensor) -> Tensor:
    """[B, B] float: caption j is true of image i (every attribute it names matches)."""
    s, c = scene_attrs[:, None, :], caption_attrs[None, :, :]
    return ((c == -1) | (c == s)).all(dim=-1).float()


def contrastive_loss(logits: Tensor, pos: Tensor) -> Tensor:
    """Symmetric InfoNCE with several positives: cross-entropy to the uniform distribution over them."""
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (i2t + t2i) / 2


# ------------------------------------------------------------------------------------------------ eval
def heldout_set(seed: int, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images [n, 3, H, W] in the pretraining style (half of them outlines), with their colour and shape
    indices and whether they are outlines."""
    rng = np.random.default_rng(seed)
    transform = EvalTransform(CONFIG.vision.image_size)
    images, colours, shapes, outlines = [], [], [], []
    for _ in range(n):
        scene = sample_scene(rng, outline_p=0.5)
        images.append(transform(render_scene(scene, PRETRAIN_STYLE, rng, CONFIG.vision.image_size)))
        colours.append(VALUES["colour"].index(scene.colour))
        shapes.append(SHAPES.index(scene.shape))
        outlines.append(scene.outline)
    return torch.stack(images), torch.tensor(colours), torch.tensor(shapes), torch.tensor(outlines)


@torch.no_grad()
def zero_shot_predict(model: CLIP, images: Tensor, classnames: list[str], template: str) -> Tensor:
    tok = get_tokenizer()([template.format(c) for c in classnames], context_length=CONFIG.text.context_length)
    txt = F.normalize(model.encode_text(tok).float(), dim=-1)
    preds = []
    for start in range(0, len(images), 250):
        img = F.normalize(model.encode_image(images[start : start + 250]).float(), dim=-1)
        preds.append((img @ txt.t()).argmax(dim=-1))
    return torch.cat(preds)


def evaluate_heldout(model: CLIP, heldout: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict[str, float]:
    """100-way zero-shot colour x shape accuracy on pretraining-style images: filled shapes with "a photo
    of a {}.", outlines with "an outline of a {}." and (for comparison) with "a photo of a {}."."""
    images, colours, shapes, outlines = heldout
    pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    names = [f"{VALUES['colour'][c]} {SHAPES[s]}" for c, s in pairs]
    out = {}
    for key, keep, template in (("filled", ~outlines, DEMO_TEMPLATE), ("outline", outlines, OUTLINE_TEMPLATE),
                                ("outline_photo_template", outlines, DEMO_TEMPLATE)):
        pred = zero_shot_predict(model, images[keep], names, template)
        pc = torch.tensor([pairs[int(p)][0] for p in pred])
        ps = torch.tensor([pairs[int(p)][1] for p in pred])
        out[f"{key}_acc"] = float(((pc == colours[keep]) & (ps == shapes[keep])).float().mean())
        if key != "outline_photo_template":
            out[f"{key}_colour_acc"] = float((pc == colours[keep]).float().mean())
            out[f"{key}_shape_acc"] = float((ps == shapes[keep]).float().mean())
    return out


def evaluate_demo(model: CLIP, per_class: int = 20) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy on the demo world's test split (all classes, base half, novel half), with the
    demo template and with the outline template."""
    transform = EvalTransform(CONFIG.vision.image_size)
    items = list(iter_demo_split("test", per_class))
    images = torch.stack([transform(img) for img, _ in items])
    labels = torch.tensor([label for _, label in items])
    names = demo_classnames()
    n_base = math.ceil(len(names) / 2)
    results = {}
    for template in (DEMO_TEMPLATE, OUTLINE_TEMPLATE):
        out = {}
        for part, (lo, hi) in {"all": (0, len(names)), "base": (0, n_base), "novel": (n_base, len(names))}.items():
            keep = (labels >= lo) & (labels < hi)
            pred = zero_shot_predict(model, images[keep], names[lo:hi], template)
            out[part] = float((pred == labels[keep] - lo).float().mean())
        results[template] = out
    return results


# ------------------------------------------------------------------------------------------------ training
def lr_at(step: int, steps: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: CLIP, vocab_embedding: Tensor, weight_decay: float) -> list[dict]:
    decay, no_decay = [], [vocab_embedding]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and "positional_embedding" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--outline-p", type=float, default=0.3, help="fraction of outline shapes")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--heldout", type=int, default=1000, help="held-out pretraining-style images")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default="demo_clip")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cpu_start = time.process_time()

    model = CLIP(CONFIG)  # OpenAI init under the seed
    model.token_embedding.weight.requires_grad_(False)
    stream = Stream(args.seed, args.batch_size, args.outline_p)
    vocab_embedding = torch.nn.Parameter(model.token_embedding.weight.detach()[stream.vocab].clone())  # [V, Dt]
    heldout = heldout_set(args.seed + 1_000_003, args.heldout)
    optimizer = torch.optim.AdamW(param_groups(model, vocab_embedding, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"demo CLIP: {n_params:,} parameters; {len(stream.vocab)} trained token rows; "
          f"{args.steps} steps x {args.batch_size}", flush=True)

    def sync_embedding() -> None:
        with torch.no_grad():
            model.token_embedding.weight[stream.vocab] = vocab_embedding.detach()

    losses: list[float] = []
    history: list[dict[str, float]] = []
    data_time = 0.0
    model.train()
    for step in range(args.steps):
        t0 = time.perf_counter()
        images, tok, eot, scene_attrs, caption_attrs = stream.batch()
        data_time += time.perf_counter() - t0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        img = F.normalize(model.encode_image(images), dim=-1)  # [B, E]
        txt = F.normalize(model.encode_text_embeddings(vocab_embedding[tok], eot), dim=-1)  # [B, E]
        logits = model.logit_scale.exp() * img @ txt.t()  # [B, B]
        loss = contrastive_loss(logits, positives(scene_attrs, caption_attrs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        done = step + 1
        if done % 10 == 0 or done == args.steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (args.steps - done)
            print(f"step {done:5d}/{args.steps}  loss {np.mean(losses[-10:]):.4f}  lr {optimizer.param_groups[0]['lr']:.2e}"
                  f"  scale {model.logit_scale.exp().item():6.2f}  {done * args.batch_size / elapsed:6.1f} samples/s"
                  f"  elapsed {elapsed:6.1f}s (cpu {time.process_time() - cpu_start:6.1f}s)  eta {eta:6.1f}s", flush=True)
        if done % args.eval_every == 0 or done == args.steps:
            sync_embedding()
            model.eval()
            stats = {"step": done, "loss": float(np.mean(losses[-10:])), **evaluate_heldout(model, heldout)}
            model.train()
            history.append(stats)
            print("  held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in stats.items() if k != "step"), flush=True)
    train_seconds = time.perf_counter() - start
    train_cpu_seconds = time.process_time() - cpu_start

    sync_embedding()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / f"{args.name}.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt"})
    digest = sha256_file(weights_path)

    # Final numbers from the shipped (fp16) file, loaded as load_demo_clip does.
    shipped = CLIP(CONFIG)
    shipped.load_state_dict({k: v.float() for k, v in load_file(str(weights_path)).items()}, strict=True)
    shipped.eval()
    final = evaluate_heldout(shipped, heldout)
    demo = evaluate_demo(shipped)
    command = "python scripts/pretrain_demo_clip.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    info = {
        "name": args.name,
        "sha256": digest,
        "size_bytes": weights_path.stat().st_size,
        "dtype": "float16",
        "config": CONFIG.to_dict(),
        "command": command,
        "seed": args.seed,
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("out_dir", "name")},
        "determinism": "torch.manual_seed(seed), torch.use_deterministic_algorithms(True), torch.set_num_threads(1), "
                       "numpy default_rng(seed) data stream",
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                        "pillow": PIL.__version__, "safetensors": safetensors.__version__,
                        "machine": platform.machine(), "processor": platform.processor()},
        "pretraining": {
            "samples_seen": args.steps * args.batch_size,
            "wall_seconds": round(train_seconds, 1),
            "cpu_seconds": round(train_cpu_seconds, 1),
            "data_seconds": round(data_time, 1),
            "final_loss": float(np.mean(losses[-20:])),
            "logit_scale": model.logit_scale.exp().item(),
            "heldout_images": args.heldout,
            "heldout_100way": final,
            "history": history,
        },
        "demo_zero_shot": {"test_per_class": 20, "by_template": demo},
    }
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {weights_path} ({info['size_bytes'] / 1e6:.1f} MB) sha256 {digest}")
    print(f"held-out 100-way (fp16 weights): {final}")
    print(f"demo zero-shot (test): {demo}")
    print(f"total {time.perf_counter() - start:.1f}s (training {train_seconds:.1f}s wall, {train_cpu_seconds:.1f}s CPU; "
          f"data {data_time:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
