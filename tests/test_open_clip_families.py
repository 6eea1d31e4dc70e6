"""open_clip checkpoints made by the real open_clip load with equal features and logits, or are refused by name.

Tiny random open_clip ``CLIP`` models (every parameter perturbed, LayerNorms included) for each option
that changes the computation without adding weights, saved in every layout open_clip checkpoints come in.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import mmprompt.clip as mclip
from _compare import rel_err
from _torchvision_stub import import_open_clip

open_clip = import_open_clip()
pytestmark = pytest.mark.skipif(open_clip is None, reason="open_clip is not installed")

REL = 1e-5
VOCAB, CONTEXT, IMAGE, SOT, EOT = 100, 16, 32, 98, 99


def model_cfg(vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A tiny open_clip model_cfg: vision 48 wide with 6 heads, text 24 wide with 3 heads (not width // 64)."""
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": IMAGE, "layers": 2, "width": 48, "head_width": 8, "patch_size": 8,
                       **(vision or {})},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 24, "heads": 3, "layers": 2,
                     **(text or {})},
        **top,
    }


def build(cfg: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def text_ids(seed: int = 1) -> torch.Tensor:
    """SOT, words (ids 3..96, some 5s), EOT, zero padding; one text fills the context."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(3, CONTEXT, dtype=torch.long)
    for i, length in enumerate((5, 9, CONTEXT)):
        ids[i, 0] = SOT
        ids[i, 1 : length - 1] = torch.randint(3, 97, (length - 2,), generator=g)
        ids[i, 2] = 5  # eos_id of the "eos" case, with larger ids after it
        ids[i, length - 1] = EOT
    return ids


def images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))


def assert_same(ours: mclip.CLIP, ref: torch.nn.Module) -> dict[str, float]:
    ids, pixels = text_ids(), images()
    with torch.no_grad():
        errors = {
            "text": rel_err(ours.encode_text(ids), ref.encode_text(ids)),
            "image": rel_err(ours.encode_image(pixels), ref.encode_image(pixels)),
            "logits": rel_err(ours(pixels, ids), ref.get_logits(pixels, ids)[0]),
        }
    assert max(errors.values()) <= REL, errors
    return errors


def save_folder(ref: torch.nn.Module, cfg: dict[str, Any], folder: Path, preprocess: dict[str, Any] | None = None,
                weights: str = "open_clip_model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if weights.endswith(".safetensors"):
        save_file(sd, str(folder / weights))
    else:
        torch.save(sd, folder / weights)
    config = {"model_cfg": cfg, **({"preprocess_cfg": preprocess} if preprocess else {})}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


CASES: dict[str, dict[str, Any]] = {
    "default_gelu": model_cfg(),
    "quick_gelu": model_cfg(quick_gelu=True),
    "text_no_causal_mask_pool_last": model_cfg(text={"no_causal_mask": True, "pool_type": "last"}),
    "text_no_causal_mask_pool_first": model_cfg(text={"no_causal_mask": True, "pool_type": "first"}),
    "text_pool_eos": model_cfg(text={"pool_type": "eos", "eos_id": 5}),
    "text_proj_bias": model_cfg(text={"proj_bias": True, "final_ln_after_pool": True}),
    "vision_pool_avg": model_cfg(vision={"pool_type": "avg"}),
    "vision_pool_avg_final_ln": model_cfg(vision={"pool_type": "avg", "final_ln_after_pool": True}),
    "norm_eps": model_cfg(vision={"norm_kwargs": {"eps": 1e-2}}, text={"norm_kwargs": {"eps": 1e-1}}),
    "gelu_tanh": model_cfg(vision={"act_kwargs": {"approximate": "tanh"}}, text={"act_kwargs": {"approximate": "tanh"}}),
    "logit_bias_nonscalar": model_cfg(init_logit_bias=-5.0, nonscalar_logit_scale=True),
    "vit_h_like_head_width": model_cfg(vision={"width": 40, "head_width": 10, "mlp_ratio": 4.3637}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_open_clip_folder_equals_open_clip(case: str, tmp_path: Path) -> None:
    cfg = CASES[case]
    ref = build(cfg)
    ours = mclip.load(save_folder(ref, cfg, tmp_path / "oc"))
    assert_same(ours, ref)
    v = cfg["vision_cfg"]
    assert ours.config.vision.heads == v["width"] // v["head_width"]
    assert ours.weights_info.sources["vision.heads"].startswith("open_clip_config.json vision_cfg.width")


LAYOUTS = ["folder_bin", "file_beside_config", "training_checkpoint_with_config_argument", "explicit_arguments"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout(layout: str, tmp_path: Path) -> None:
    cfg = CASES["text_no_causal_mask_pool_last"]
    ref = build(cfg)
    kwargs: dict[str, Any] = {}
    if layout == "folder_bin":
        path = save_folder(ref, cfg, tmp_path / "oc", weights="open_clip_pytorch_model.bin")
    elif layout == "file_beside_config":
        path = save_folder(ref, cfg, tmp_path / "oc", weights="epoch_7.safetensors") / "epoch_7.safetensors"
    else:
        path = tmp_path / "run" / "epoch_32.pt"
        path.parent.mkdir()
        sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
        torch.save({"epoch": 32, "name": "tiny", "state_dict": sd}, path)
        with pytest.raises(mclip.MissingFieldError, match="text_causal=True | False"):
            mclip.load(path)
        if layout == "explicit_arguments":
            kwargs = {"heads": (6, 3), "activation": "gelu", "eps": 1e-5, "text_causal": False, "text_pool": "last",
                      "vision_pool": "tok"}
        else:
            save_folder(ref, cfg, tmp_path / "cfg")
            kwargs = {"config": tmp_path / "cfg" / "open_clip_config.json"}
    assert_same(mclip.load(path, **kwargs), ref)


def test_preprocess_cfg_comes_with_the_weights(tmp_path: Path) -> None:
    """DFN's releases state a squash resize and their own statistics; they travel with the model."""
    cfg = CASES["quick_gelu"]
    pre = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear", "resize_mode": "squash"}
    ours = mclip.load(save_folder(build(cfg), cfg, tmp_path / "oc", preprocess=pre))
    p = ours.config.image_preprocess
    assert (p.resize_mode, p.interpolation, p.mean, p.std) == ("squash", "bilinear", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert (ours.config.mean, ours.config.std) == (p.mean, p.std)
    assert p.source == "open_clip_config.json preprocess_cfg"


REFUSED = {
    "layer scale": (model_cfg(vision={"ls_init_value": 0.1}), "ls_init_value = 0.1: layer scale"),
    "attentional pooling": (model_cfg(vision={"attentional_pool": True}), "attentional pooling"),
    "no_ln_pre": (model_cfg(vision={"no_ln_pre": True}), "no_ln_pre"),
    "qk-norm": (model_cfg(vision={"qk_norm": True}), "qk-norm"),
    "timm (EVA)": (model_cfg(vision={"timm_model_name": "eva02_large_patch14_224"}), "EVA with RoPE / SwiGLU"),
    "CoCa class token": (model_cfg(text={"embed_cls": True}), "appended class token"),
    "no text projection": (model_cfg(text={"proj_type": "none"}), "proj_type = 'none'"),
    "vision pool none": (model_cfg(vision={"pool_type": "none"}), "pool_type = 'none'"),
    "custom text": (model_cfg(custom_text=True), "CustomTextCLIP"),
    "unknown option": (model_cfg(text={"rope_theta": 10000}), "rope_theta is an open_clip option mmprompt does not"),
    "non-square image": (model_cfg(vision={"image_size": [32, 48]}), "not square"),
    "other activation kwargs": (model_cfg(vision={"act_kwargs": {"inplace": True}}), "act_kwargs"),
    "tokenizer strip_sep_token": (model_cfg(text={"tokenizer_kwargs": {"strip_sep_token": True}}),
                                  r"tokenizer_kwargs \['strip_sep_token'\] are not supported"),
    "tokenizer mode": (model_cfg(text={"tokenizer_mode": "clips"}), "tokenizer_mode = 'clips'"),
    "unknown text cleaning": (model_cfg(text={"tokenizer_kwargs": {"clean": "upper"}}), "clean = 'upper'"),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_unimplemented_options_are_refused_by_name(what: str, tmp_path: Path) -> None:
    cfg, message = REFUSED[what]
    ref = build(CASES["default_gelu"])
    folder = save_folder(ref, cfg, tmp_path / "oc")
    with pytest.raises(mclip.UnsupportedCheckpointError, match=message):
        mclip.load(folder)


def test_named_vit_h_g_bigG_match_open_clip_configs() -> None:
    """The named architectures' heads and widths are open_clip's (ViT-H/g/bigG: 16 vision heads)."""
    for name, oc_name in (("ViT-H/14", "ViT-H-14"), ("ViT-g/14", "ViT-g-14"), ("ViT-bigG/14", "ViT-bigG-14")):
        oc = open_clip.get_model_config(oc_name)
        ours = mclip.get_config(name)
        v, t = oc["vision_cfg"], oc["text_cfg"]
        assert ours.embed_dim == oc["embed_dim"]
        assert (ours.vision.width, ours.vision.layers, ours.vision.patch_size, ours.vision.image_size) == (
            v["width"], v["layers"], v["patch_size"], v["image_size"])
        assert ours.vision.heads == v["width"] // v["head_width"] == 16
        assert int(ours.vision.width * ours.vision.mlp_ratio) == int(v["width"] * v.get("mlp_ratio", 4.0))
        assert (ours.text.width, ours.text.layers, ours.text.heads) == (t["width"], t["layers"], t["heads"])


def test_open_clip_config_written_by_mmprompt_builds_the_same_model_in_open_clip(tmp_path: Path) -> None:
    """open_clip_config() states a mmprompt config so that open_clip builds an equal model, and load() reads
    it back without arguments."""
    from mmprompt.clip.openclip import open_clip_config

    ref = build(CASES["text_no_causal_mask_pool_last"])
    ours = mclip.load(save_folder(ref, CASES["text_no_causal_mask_pool_last"], tmp_path / "a"))
    cfg = ours.config.replace(vision=dataclasses.replace(ours.config.vision, pool="avg", final_ln_after_pool=True,
                                                          ln_eps=1e-3, activation="gelu_tanh"))
    model = mclip.CLIP(cfg).eval()
    model.load_state_dict(ours.state_dict())
    written = open_clip_config(cfg)
    rebuilt = open_clip.model.CLIP(**written["model_cfg"]).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert_same(model, rebuilt)
    folder = tmp_path / "b"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "w.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(written))
    again = mclip.load(folder / "w.safetensors")
    assert again.config.replace(preprocess=None) == cfg.replace(preprocess=None)


def test_worldwide_config_takes_its_tokenizer_from_tokenizer_json(tmp_path: Path) -> None:
    """ViT-H-14-worldwide style: eos pooling at id 2 and a Hugging Face tokenizer instead of CLIP's BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    cfg = model_cfg(text={"hf_tokenizer_name": "facebook/xlm-v-base", "pool_type": "eos", "eos_id": 2})
    ref = build(cfg)
    folder = save_folder(ref, cfg, tmp_path / "oc")
    words = ["<s>", "<pad>", "</s>", "<unk>", "a", "photo", "of", "cat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    ours = mclip.load(folder)
    assert (ours.config.text.pool, ours.config.text.eos_id, ours.prompt_start) == ("eos", 2, 1)
    ids = ours.get_tokenizer()(["a photo of a cat"], context_length=CONTEXT)
    assert ids[0, :7].tolist() == [0, 4, 5, 6, 4, 7, 2] and set(ids[0, 7:].tolist()) == {1}
    with torch.no_grad():
        assert rel_err(ours.encode_text(ids), ref.encode_text(ids)) <= REL


def _word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json (cased words, punctuation as tokens) that ``transformers`` also loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<s>", "<pad>", "</s>", "<unk>", "a", "A", "photo", "Photo", "of", "cat", "CAT", ".", "!", "_"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>"}))


TEXTS = ["A Photo of a CAT.", "a_photo   of a cat!", "a photo of a cat"]


@pytest.mark.parametrize("clean", [None, "canonicalize", "whitespace", "lower"])
def test_tokenizer_text_cleaning_matches_open_clip(clean: str | None, tmp_path: Path) -> None:
    """``text_cfg.tokenizer_kwargs.clean`` (SigLIP: canonicalize) gives open_clip's token ids, through
    ``open_clip.get_tokenizer("local-dir:...")`` reading the same folder."""
    kwargs = {"tokenizer_kwargs": {"clean": clean}} if clean else {}
    cfg = model_cfg(text={"hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "pool_type": "last", "no_causal_mask": True,
                          **kwargs})
    folder = save_folder(build(cfg), cfg, tmp_path / "oc")
    _word_tokenizer(folder)
    ours = mclip.load(folder).get_tokenizer()
    theirs = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert ours.clean == (clean or "whitespace")
    assert torch.equal(ours(TEXTS, context_length=CONTEXT), theirs(TEXTS))
    if clean in ("canonicalize", "lower"):  # (whitespace cleaning changes nothing for this pre-tokenizer)
        raw = mclip.load(folder).get_tokenizer()
        raw.clean = "none"
        assert not torch.equal(raw(TEXTS, context_length=CONTEXT), theirs(TEXTS))  # the cleaning is what matches


@pytest.mark.parametrize("clean", ["canonicalize", "whitespace"])
def test_clip_bpe_with_a_stated_text_cleaning_matches_open_clip(clean: str, tmp_path: Path) -> None:
    cfg = model_cfg(text={"vocab_size": 49408, "tokenizer_kwargs": {"clean": clean}})
    folder = save_folder(build(cfg), cfg, tmp_path / "oc")
    ours = mclip.load(folder).get_tokenizer()
    theirs = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert ours.clean == clean
    texts = [*TEXTS, "Abyssinian_cat (a breed)"]
    assert torch.equal(ours(texts, context_length=CONTEXT), theirs(texts))
    assert not torch.equal(mclip.get_tokenizer()(texts, context_length=CONTEXT), theirs(texts))  # CLIP default differs
