"""Folders the loaders refuse say what they are, in one line (issue 21, point 13); a hub folder that holds
open_clip's weights beside another library's loads open_clip's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mmprompt.clip as mclip
from mmprompt.clip.describe import MissingFieldError, UnsupportedCheckpointError
from mmprompt.errors import classify_error
from test_engine_support import save_tiny_clip

transformers = pytest.importorskip("transformers")

TOWERS = {
    "text_config": {"hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 98, "eos_token_id": 99,
                    "pad_token_id": 0},
    "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6,
                      "image_size": 32, "patch_size": 8},
}


def _one_line(exc: BaseException) -> str:
    info = classify_error(exc)
    assert info is not None and info.code == 4, repr(exc)  # a weights error: exit code 4, no traceback
    assert "\n" not in info.message
    return info.message


def _folder(path: Path, config: dict, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors or {"text_model.embeddings.token_embedding.weight": torch.zeros(4, 4)},
              str(path / "model.safetensors"))
    return path


def test_hf_folder_with_null_eos_token_id_asks_for_the_pooling(tmp_path: Path) -> None:
    config = transformers.CLIPConfig(**TOWERS, projection_dim=24)
    transformers.CLIPModel(config).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["text_config"]["eos_token_id"] = None
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(MissingFieldError) as info:
        mclip.load(tmp_path)
    message = _one_line(info.value)
    assert "eos_id" in message or "text_pool" in message
    model = mclip.load(tmp_path, eos_id=99)  # the argument it names completes the description
    assert (model.config.text.pool, model.config.text.eos_id) == ("eos", 99)


@pytest.mark.parametrize(("model_type", "words"), [
    ("siglip2", "Siglip2Model"), ("altclip", "AltCLIP"), ("chinese_clip", "ChineseCLIP"),
    ("clip_vision_model", "vision-only"), ("siglip_vision_model", "vision-only"), ("owlvit", "OWL-ViT")])
def test_unsupported_model_types_are_named(tmp_path: Path, model_type: str, words: str) -> None:
    config = {"model_type": model_type, **({} if "vision_model" in model_type else TOWERS)}
    folder = _folder(tmp_path / model_type, config)
    with pytest.raises(UnsupportedCheckpointError) as info:
        mclip.load(folder)
    message = _one_line(info.value)
    assert f"model_type {model_type!r}" in message and words in message
    assert "unrecognised layout" not in message and "non-square" not in message


def test_open_clip_resnet_folder_says_resnet(tmp_path: Path) -> None:
    folder = tmp_path / "RN50"
    folder.mkdir()
    model_cfg = {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)},
               folder / "open_clip_pytorch_model.bin")
    with pytest.raises(UnsupportedCheckpointError) as info:
        mclip.load(folder)
    message = _one_line(info.value)
    assert "ResNet towers are not supported" in message and "KeyError" not in message


def test_hub_folder_with_timm_and_open_clip_files_loads_open_clips(tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    folder.mkdir()
    save_tiny_clip(folder / "weights.pt")
    (folder / "weights.pt").rename(folder / "open_clip_pytorch_model.bin")
    # timm's image-tower files in the same repository
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_clip_224", "num_classes": 0}))
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, str(folder / "model.safetensors"))
    model = mclip.load(folder)
    assert model.weights_info.weights_file.name == "open_clip_pytorch_model.bin"
    assert model.config.vision.layers == mclip.get_config("tiny").vision.layers
