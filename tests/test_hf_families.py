"""Hugging Face folders written by the real transformers load with equal features and logits.

Tiny random CLIPModel / MetaClip2Model / SiglipModel configurations, every parameter (LayerNorms included)
perturbed, saved with ``save_pretrained``; mmprompt's model must give the same features and logits (fp32,
relative error <= 1e-5), and every field it cannot implement must be refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import mmprompt.clip as mclip
from _compare import rel_err

transformers = pytest.importorskip("transformers")

REL = 1e-5
VOCAB, CONTEXT, IMAGE = 100, 16, 32


def features(out: Any) -> torch.Tensor:
    """transformers 5 returns model outputs from get_*_features, 4.x tensors."""
    return out if torch.is_tensor(out) else out.pooler_output


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def text_ids(eos: int, pad: int = 0, seed: int = 1) -> torch.Tensor:
    """Ids [3, CONTEXT]: start 98, random words, ``eos``, then ``pad``; word ids may exceed ``eos``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((3, CONTEXT), pad, dtype=torch.long)
    for i, length in enumerate((4, 9, CONTEXT)):
        ids[i, 0] = 98
        ids[i, 1 : length - 1] = torch.randint(3, 97, (length - 2,), generator=g)
        ids[i, length - 1] = eos
    return ids


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))


def tiny_towers(**text: Any) -> dict[str, Any]:
    return {
        "text_config": {"hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
                        "bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 0, **text},
        "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                          "num_attention_heads": 6, "image_size": IMAGE, "patch_size": 8},
    }


def assert_same(ours: mclip.CLIP, ref: torch.nn.Module, ids: torch.Tensor, logit_bias: bool = False) -> None:
    pixels = images()
    with torch.no_grad():
        t_ref = features(ref.get_text_features(input_ids=ids))
        i_ref = features(ref.get_image_features(pixel_values=pixels))
        logits_ref = ref(input_ids=ids, pixel_values=pixels).logits_per_image
        t, i = ours.encode_text(ids), ours.encode_image(pixels)
        logits = ours(pixels, ids)
    assert rel_err(t, t_ref) <= REL, rel_err(t, t_ref)
    assert rel_err(i, i_ref) <= REL, rel_err(i, i_ref)
    assert rel_err(logits, logits_ref) <= REL, rel_err(logits, logits_ref)
    assert ours.config.logit_bias == logit_bias


CLIP_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (text_config changes, vision_config changes)
    "heads_not_width_over_64": ({}, {}),
    "gelu_and_eps": ({"hidden_act": "gelu", "layer_norm_eps": 1e-2}, {"hidden_act": "gelu", "layer_norm_eps": 1e-1}),
    "gelu_tanh": ({"hidden_act": "gelu_pytorch_tanh"}, {"hidden_act": "gelu_new"}),
    "legacy_eos_2_pools_at_argmax": ({"eos_token_id": 2}, {}),
}


@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_clip_model_folders(case: str, tmp_path: Path) -> None:
    text, vision = CLIP_CASES[case]
    towers = tiny_towers(**text)
    towers["vision_config"].update(vision)
    ref = perturbed(transformers.CLIPModel(transformers.CLIPConfig(**towers, projection_dim=24)))
    ref.save_pretrained(tmp_path)
    ours = mclip.load(tmp_path)
    assert_same(ours, ref, text_ids(eos=99))
    assert (ours.config.vision.heads, ours.config.text.heads) == (6, 4)


def test_clip_folder_uses_clips_bpe_tokenizer(tmp_path: Path) -> None:
    from mmprompt.clip.tokenizer import Tokenizer

    config = transformers.CLIPConfig(**tiny_towers(vocab_size=49408, eos_token_id=49407, bos_token_id=49406),
                                     projection_dim=24)
    transformers.CLIPModel(config).save_pretrained(tmp_path)
    ours = mclip.load(tmp_path)
    assert isinstance(ours.get_tokenizer(), Tokenizer)
    assert (ours.config.text.pool, ours.config.text.eos_id, ours.prompt_start) == ("eos", 49407, 1)


def test_text_config_dict_is_merged_as_transformers_merges_it(tmp_path: Path) -> None:
    ref = perturbed(transformers.CLIPModel(transformers.CLIPConfig(**tiny_towers(), projection_dim=24)))
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # *_config_dict (completed with defaults) wins over *_config: 2 heads and quick_gelu's default eps.
    config["text_config_dict"] = {**tiny_towers()["text_config"], "num_attention_heads": 2}
    config["text_config"]["layer_norm_eps"] = 0.5  # overridden by the dict's default 1e-5
    (tmp_path / "config.json").write_text(json.dumps(config))
    ref2 = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    assert ref2.config.text_config.num_attention_heads == 2
    ours = mclip.load(tmp_path)
    assert ours.config.text.heads == 2 and ours.config.text.ln_eps == 1e-5
    assert_same(ours, ref2, text_ids(eos=99))


def test_metaclip_2_pools_at_the_first_eos(tmp_path: Path) -> None:
    cls = getattr(transformers, "MetaClip2Model", None)
    if cls is None:
        pytest.skip("this transformers has no MetaClip2Model")
    config = transformers.MetaClip2Config(**tiny_towers(eos_token_id=2, bos_token_id=0, pad_token_id=1),
                                          projection_dim=24)
    ref = perturbed(cls(config))
    ref.save_pretrained(tmp_path)
    ours = mclip.load(tmp_path)
    assert (ours.config.text.pool, ours.config.text.eos_id) == ("eos", 2)
    ids = text_ids(eos=2, pad=1)  # word ids above 2 after the eos: argmax pooling would be wrong
    assert_same(ours, ref, ids)


# --------------------------------------------------------------------------------------------- SigLIP
def siglip_config(**text: Any) -> Any:
    towers = tiny_towers(**{"projection_size": 48, "pad_token_id": 1, "eos_token_id": 1, **text})
    towers["vision_config"]["layer_norm_eps"] = 1e-6
    return transformers.SiglipConfig(**towers)


def write_siglip_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json (built with the tokenizers library) that appends </s>, as SigLIP's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "cat", "dog", "red", "car", "the"]
    vocab = {w: i for i, w in enumerate(words)} | {f"w{i}": i for i in range(len(words), VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "</s>", "eos_token": "</s>"}))


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("siglip")
    ref = perturbed(transformers.SiglipModel(siglip_config()))
    ref.save_pretrained(folder)
    write_siglip_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": IMAGE, "width": IMAGE}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
    }))
    return folder, ref


def test_siglip_features_and_logits_equal_transformers(siglip_folder: tuple[Path, torch.nn.Module]) -> None:
    folder, ref = siglip_folder
    ours = mclip.load(folder)
    c = ours.config
    assert (c.family, c.text.causal, c.text.pool, c.vision.pool, c.text.proj_bias) == ("siglip", False, "last",
                                                                                         "map", True)
    assert (c.vision.ln_eps, c.text.ln_eps, c.activation) == (1e-6, 1e-6, "gelu_tanh")
    assert mclip.CLIPConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # survives a JSON round trip
    tokens = ours.get_tokenizer()(["a photo of a cat", "the red car", "dog"], context_length=CONTEXT)
    assert_same(ours, ref, tokens, logit_bias=True)
    # the logit bias is SigLIP's: a constant on every logit, so a softmax over classes ignores it
    assert float(ours.logit_bias) == pytest.approx(float(ref.logit_bias.detach()))


def test_siglip_tokenizer_equals_transformers_fast_tokenizer(siglip_folder: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = siglip_folder
    ours = mclip.load(folder)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="</s>")
    texts = ["a photo of a cat", "the red car on the dog", "zebra"]
    expected = ref(texts, padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
    assert torch.equal(ours.get_tokenizer()(texts, context_length=CONTEXT), expected)
    # no start token: learned prompts go at position 0; the fast text paths are not exact here
    assert (ours.prompt_start, ours.text_fast_paths_exact) == (0, False)


def test_siglip_text_ignores_truncation_requests(siglip_folder: tuple[Path, torch.nn.Module]) -> None:
    """A bidirectional tower computes the whole sequence even when truncation or a shared prefix is asked."""
    ours = mclip.load(siglip_folder[0])
    tokens = ours.get_tokenizer()(["a photo of a cat", "a photo of a dog"], context_length=CONTEXT)
    x, pool = ours.embed_tokens(tokens), ours.text_pool_index(tokens)
    full = ours.encode_text_embeddings(x, pool, truncate=False)
    asked = ours.encode_text_embeddings(x, pool, truncate=True, shared_prefix=3)
    assert torch.equal(full, asked)


# ------------------------------------------------------------------------------------------- refusals
def _write_config(folder: Path, config: dict[str, Any]) -> Path:
    ref = perturbed(transformers.CLIPModel(transformers.CLIPConfig(**tiny_towers(), projection_dim=24)))
    ref.save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data.update(config)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "siglip2"}, "NaFlex"),
        ({"model_type": "altclip"}, "model_type 'altclip' is not supported"),
        ({"text_config": {**tiny_towers()["text_config"], "hidden_act": "relu"}}, "hidden_act = 'relu'"),
        ({"vision_config": {**tiny_towers()["vision_config"], "image_size": [32, 48]}}, "not square"),
    ],
)
def test_unsupported_hf_fields_are_refused_by_name(change: dict[str, Any], message: str, tmp_path: Path) -> None:
    folder = _write_config(tmp_path, change)
    with pytest.raises(mclip.UnsupportedCheckpointError, match=message):
        mclip.load(folder)


def test_siglip_without_pooling_head_is_refused(tmp_path: Path) -> None:
    config = siglip_config()
    config.vision_config.vision_use_head = False
    transformers.SiglipModel(config).save_pretrained(tmp_path)
    with pytest.raises(mclip.UnsupportedCheckpointError, match="vision_use_head"):
        mclip.load(tmp_path)


def test_hf_weights_away_from_their_config_need_the_fields(tmp_path: Path) -> None:
    ref = perturbed(transformers.CLIPModel(transformers.CLIPConfig(**tiny_towers(), projection_dim=24)))
    ref.save_pretrained(tmp_path / "hf")
    bare = tmp_path / "bare"
    bare.mkdir()
    (tmp_path / "hf" / "model.safetensors").rename(bare / "model.safetensors")
    with pytest.raises(mclip.MissingFieldError, match=r"heads=\(vision_heads, text_heads\)"):
        mclip.load(bare / "model.safetensors")
    ours = mclip.load(bare / "model.safetensors", config=tmp_path / "hf" / "config.json")
    assert_same(ours, ref, text_ids(eos=99))


# -------------------------------------------------------------------------------------- preprocessing
def odd_images() -> list[Any]:
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    sizes = [(37, 53), (64, 31), (32, 32), (101, 77), (20, 45)]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for w, h in sizes]


def _processor(name: str) -> Any:
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def test_siglip_preprocessing_equals_its_image_processor(siglip_folder: tuple[Path, torch.nn.Module]) -> None:
    from mmprompt.clip.transforms import transform_for

    folder, _ = siglip_folder
    ours = transform_for(mclip.load(folder).config, train=False)
    assert (ours.resize_mode, ours.interpolation, ours.mean) == ("squash", "bicubic", (0.5, 0.5, 0.5))
    processor = _processor("SiglipImageProcessor").from_pretrained(folder)
    for image in odd_images():
        expected = torch.as_tensor(processor(image, return_tensors="np").pixel_values[0])
        assert torch.allclose(ours(image), expected, atol=1e-5), (ours(image) - expected).abs().max()


def test_clip_preprocessing_equals_its_image_processor(tmp_path: Path) -> None:
    from mmprompt.clip.transforms import transform_for

    ref = transformers.CLIPModel(transformers.CLIPConfig(**tiny_towers(), projection_dim=24))
    ref.save_pretrained(tmp_path)
    processor = _processor("CLIPImageProcessor")(size={"shortest_edge": IMAGE}, crop_size=IMAGE,
                                                 image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    processor.save_pretrained(tmp_path)
    ours = transform_for(mclip.load(tmp_path).config, train=False)
    assert (ours.resize_mode, ours.mean) == ("shortest", (0.4, 0.5, 0.6))
    for image in odd_images():
        expected = torch.as_tensor(processor(image, return_tensors="np").pixel_values[0])
        assert torch.allclose(ours(image), expected, atol=1e-5), (ours(image) - expected).abs().max()


# ------------------------------------------------------------------------------------- prompt positions
@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_deep_text_prompts_go_where_the_tower_puts_prompts(family: str, tmp_path: Path) -> None:
    """Deep prompts equal to the states they replace leave the features unchanged, at position 0 without a
    start token (SigLIP) and after it (CLIP); as trainable tensors they receive gradients."""
    if family == "siglip":
        transformers.SiglipModel(siglip_config()).save_pretrained(tmp_path)
        write_siglip_tokenizer(tmp_path)
        ours = mclip.load(tmp_path)
        tokens = ours.get_tokenizer()(["a photo of a cat", "dog"], context_length=CONTEXT)
    else:
        transformers.CLIPModel(transformers.CLIPConfig(**tiny_towers(), projection_dim=24)).save_pretrained(tmp_path)
        ours = mclip.load(tmp_path)
        tokens = text_ids(eos=99)[:2]
    start, n = ours.prompt_start, 3
    assert start == (0 if family == "siglip" else 1)
    states: dict[str, torch.Tensor] = {}
    hook = ours.transformer.resblocks[1].register_forward_pre_hook(
        lambda module, args: states.__setitem__("x", args[0].detach().clone()))
    x, pool = ours.embed_tokens(tokens), ours.text_pool_index(tokens)
    with torch.no_grad():
        plain = ours.encode_text_embeddings(x, pool, truncate=False)
    hook.remove()
    deep = states["x"][:, start : start + n].clone().requires_grad_(True)
    prompted = ours.encode_text_embeddings(x, pool, deep_prompts=[None, deep], truncate=False)
    assert torch.allclose(prompted, plain, atol=1e-6)
    prompted.sum().backward()
    assert deep.grad is not None and float(deep.grad.abs().sum()) > 0
