"""Weights: every checkpoint layout loads to identical logits; registry, verified cached downloads, refusals.

All models are tiny and random; downloads go to an ``http.server`` on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import mmprompt.clip as mclip
from mmprompt.clip import weights as W
from mmprompt.clip.config import CLIPConfig, get_config
from mmprompt.clip.convert import TORCHSCRIPT_INT_KEYS, UnknownLayoutError
from mmprompt.clip.model import CLIP, build_model

# The "tiny" architecture with a small vocabulary: 0.4M parameters instead of 3.6M, so files are small.
TINY = get_config("tiny").replace(text=dataclasses.replace(get_config("tiny").text, vocab_size=1000))
SOT, EOT = 998, 999


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronisation (seconds on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ helpers
def make_model(config: CLIPConfig = TINY, seed: int = 0) -> CLIP:
    """A tiny CLIP whose every parameter (biases and LayerNorms included) is random."""
    torch.manual_seed(seed)
    model = CLIP(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(config: CLIPConfig = TINY) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size, generator=g)
    tokens = torch.zeros(3, config.text.context_length, dtype=torch.long)
    for i, length in enumerate((5, 9, 14)):
        tokens[i, 0] = SOT
        tokens[i, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=g)
        tokens[i, length - 1] = EOT
    return images, tokens


def logits(model: CLIP) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs(model.config))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)


def save_openai(model: CLIP, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def save_torchscript(model: CLIP, path: Path) -> Path:
    """An archive shaped like OpenAI's: the model's keys plus three int entries."""
    scripted = copy.deepcopy(model)
    scripted.register_buffer("input_resolution", torch.tensor(model.config.vision.image_size))
    scripted.register_buffer("context_length", torch.tensor(model.config.text.context_length))
    scripted.register_buffer("vocab_size", torch.tensor(model.config.text.vocab_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the data-dependent truncation
        traced = torch.jit.trace(scripted, inputs(model.config), check_trace=False)
        assert set(traced.state_dict()) == set(model.state_dict()) | set(TORCHSCRIPT_INT_KEYS)
        torch.jit.save(traced, str(path))
    return path


def open_clip_state(model: CLIP) -> dict[str, torch.Tensor]:
    sd = dict(model.state_dict())
    sd["attn_mask"] = causal_mask(model.config.text.context_length)
    return sd


def save_open_clip(model: CLIP, path: Path) -> Path:
    """An open_clip training checkpoint: DDP prefixes under a ``state_dict`` wrapper, with the mask buffer."""
    sd = {f"module.{k}": v for k, v in open_clip_state(model).items()}
    torch.save({"epoch": 32, "name": "tiny", "state_dict": sd}, path)
    return path


def save_open_clip_safetensors(model: CLIP, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in open_clip_state(model).items()}, str(path))
    return path


def to_hf(model: CLIP) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face ``CLIPModel`` names (written independently of the library)."""
    out: dict[str, torch.Tensor] = {}
    for key, v in model.state_dict().items():
        v = v.clone()
        if key == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
            continue
        if key == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
            continue
        simple = {
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "logit_scale": "logit_scale",
        }
        if key in simple:
            out[simple[key]] = v
            continue
        for old, new in (
            ("ln_final.", "text_model.final_layer_norm."),
            ("visual.ln_pre.", "vision_model.pre_layrnorm."),
            ("visual.ln_post.", "vision_model.post_layernorm."),
        ):
            if key.startswith(old):
                out[new + key[len(old) :]] = v
                break
        else:
            tower, rest = (
                ("vision_model", key[len("visual.transformer.resblocks.") :])
                if key.startswith("visual.")
                else ("text_model", key[len("transformer.resblocks.") :])
            )
            layer, name = rest.split(".", 1)
            base = f"{tower}.encoder.layers.{layer}"
            if name.startswith("attn.in_proj_"):
                kind = name.rsplit("_", 1)[-1]
                for part, chunk in zip("qkv", v.chunk(3, dim=0), strict=True):
                    out[f"{base}.self_attn.{part}_proj.{kind}"] = chunk.contiguous()
                continue
            name = (
                name.replace("attn.out_proj", "self_attn.out_proj")
                .replace("ln_1", "layer_norm1")
                .replace("ln_2", "layer_norm2")
                .replace("mlp.c_fc", "mlp.fc1")
                .replace("mlp.c_proj", "mlp.fc2")
            )
            out[f"{base}.{name}"] = v
    n_text, n_vis = model.config.text.context_length, model.config.vision.num_positions
    out["text_model.embeddings.position_ids"] = torch.arange(n_text)[None]
    out["vision_model.embeddings.position_ids"] = torch.arange(n_vis)[None]
    return out


def hf_config(model: CLIPConfig, hidden_act: str | None = "quick_gelu") -> dict[str, Any]:
    t, v = model.text, model.vision
    text = {
        "hidden_size": t.width,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "intermediate_size": int(t.width * t.mlp_ratio),
        "max_position_embeddings": t.context_length,
        "vocab_size": t.vocab_size,
        # transformers pools at the first eos_token_id (argmax(ids) only for the legacy value 2)
        "bos_token_id": t.vocab_size - 2,
        "eos_token_id": t.vocab_size - 1,
    }
    vision = {
        "hidden_size": v.width,
        "num_hidden_layers": v.layers,
        "num_attention_heads": v.heads,
        "intermediate_size": int(v.width * v.mlp_ratio),
        "image_size": v.image_size,
        "patch_size": v.patch_size,
    }
    if hidden_act is not None:
        text["hidden_act"] = vision["hidden_act"] = hidden_act
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": model.embed_dim,
        "text_config": text,
        "vision_config": vision,
    }


def open_clip_model_cfg(config: CLIPConfig, **text_extra: Any) -> dict[str, Any]:
    """An open_clip ``model_cfg`` describing ``config`` (written independently of open_clip)."""
    v, t = config.vision, config.text
    return {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.activation == "quick_gelu",
        "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                       "head_width": v.width // v.heads, "patch_size": v.patch_size, "mlp_ratio": v.mlp_ratio},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, **text_extra},
    }


def save_hf_folder(model: CLIP, folder: Path, weights: str = "model.safetensors", **cfg: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(model.config, **cfg)))
    sd = to_hf(model)
    if weights.endswith(".safetensors"):
        save_file(sd, str(folder / weights))
    else:
        torch.save(sd, folder / weights)
    return folder


def save_hf_bare(model: CLIP, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_hf(model), str(path))
    return path


# ----------------------------------------------------------------------------------------- formats
FORMATS: dict[str, tuple[Callable[[CLIP, Path], Path], dict[str, Any], str, str]] = {
    # name: (writer, load kwargs, expected file_format, expected source_layout)
    "openai_state_dict": (
        lambda m, d: save_openai(m, d / "m.pt"),
        {"architecture": "tiny"},
        "torch",
        "openai",
    ),
    "torchscript": (
        lambda m, d: save_torchscript(m, d / "m.pt"),
        {"architecture": "tiny", "allow_torchscript": True},
        "torchscript",
        "openai",
    ),
    "open_clip_pt": (
        lambda m, d: save_open_clip(m, d / "epoch_32.pt"),
        {"architecture": "tiny"},
        "torch",
        "openai",
    ),
    "open_clip_safetensors": (
        lambda m, d: save_open_clip_safetensors(m, d / "open_clip.safetensors"),
        {"architecture": "tiny"},
        "safetensors",
        "openai",
    ),
    "hf_folder_safetensors": (lambda m, d: save_hf_folder(m, d / "hf"), {}, "safetensors", "hf"),
    "hf_folder_bin": (
        lambda m, d: save_hf_folder(m, d / "hf", weights="pytorch_model.bin"),
        {},
        "torch",
        "hf",
    ),
    "hf_bare_safetensors": (
        lambda m, d: save_hf_bare(m, d / "bare" / "model.safetensors"),
        {"architecture": "tiny"},
        "safetensors",
        "hf",
    ),
}


@pytest.fixture(scope="module")
def reference() -> tuple[CLIP, torch.Tensor]:
    model = make_model()
    return model, logits(model)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_gives_identical_logits(
    fmt: str, reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    writer, kwargs, file_format, layout = FORMATS[fmt]
    path = writer(model, tmp_path)
    loaded = mclip.load(path, **kwargs)
    assert torch.equal(logits(loaded), expected)
    stated = model.config
    if "architecture" not in kwargs:  # config.json: transformers pools at the first eos_token_id
        stated = stated.replace(text=dataclasses.replace(stated.text, pool="eos", eos_id=EOT))
    assert loaded.config.replace(preprocess=None) == stated
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    sd, info = mclip.load_state_dict_any(path, **kwargs)
    assert set(sd) == set(model.state_dict())
    assert (info.file_format, info.source_layout, info.activation) == (file_format, layout, "quick_gelu")


def test_string_paths_load_too(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    model, expected = reference
    path = save_openai(model, tmp_path / "m.pt")
    assert torch.equal(logits(mclip.load(str(path), architecture="tiny")), expected)


def test_hf_config_sets_heads_and_activation(tmp_path: Path) -> None:
    # Heads that differ from OpenAI's width // 64 rule, and GELU: both can only come from config.json.
    config = TINY.replace(
        activation="gelu",
        vision=dataclasses.replace(TINY.vision, heads=4),
        text=dataclasses.replace(TINY.text, heads=2),
    )
    model = make_model(config)
    folder = save_hf_folder(model, tmp_path / "hf", hidden_act="gelu")
    loaded = mclip.load(folder)
    assert (loaded.config.vision.heads, loaded.config.text.heads, loaded.config.activation) == (4, 2, "gelu")
    assert torch.equal(logits(loaded), logits(model))
    _, info = mclip.load_state_dict_any(folder)
    assert info.activation_source == "config.json vision_config.hidden_act"
    assert info.sources["vision.heads"] == "config.json vision_config.num_attention_heads"
    # The weights file taken out of its folder by path still reads the folder's config.json.
    assert mclip.load(folder / "model.safetensors").config == loaded.config


def test_hf_config_without_hidden_act_means_quick_gelu(
    reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    # transformers omits default values from config.json; its CLIP default is quick_gelu.
    model, expected = reference
    folder = save_hf_folder(model, tmp_path / "hf", hidden_act=None)
    assert torch.equal(logits(mclip.load(folder)), expected)


def test_hf_sharded_folder(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    model, expected = reference
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(model.config)))
    sd = to_hf(model)
    shards: dict[str, dict[str, torch.Tensor]] = {
        "model-00001-of-00002.safetensors": {},
        "model-00002-of-00002.safetensors": {},
    }
    for i, (key, value) in enumerate(sd.items()):
        shards[sorted(shards)[i % 2]][key] = value
    weight_map = {key: name for name, part in shards.items() for key in part}
    for name, part in shards.items():
        save_file(part, str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(logits(mclip.load(folder)), expected)


def test_hf_preprocessor_config_sets_mean_std(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    folder = save_hf_folder(reference[0], tmp_path / "hf")
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    cfg = mclip.load(folder).config
    assert (cfg.mean, cfg.std) == ((0.5,) * 3, (0.25,) * 3)


def test_open_clip_folder_reads_activation_from_its_config(tmp_path: Path) -> None:
    model = make_model(TINY.replace(activation="gelu"))
    folder = tmp_path / "oc"
    folder.mkdir()
    save_open_clip_safetensors(model, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip_model_cfg(model.config)}))
    loaded = mclip.load(folder)
    assert loaded.config.activation == "gelu"
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_and_device(dtype: torch.dtype, reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    path = save_openai(reference[0], tmp_path / "m.pt")
    loaded = mclip.load(path, device=torch.device("cpu"), dtype=dtype, architecture="tiny")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="floating point"):
        mclip.load(path, dtype=torch.int64, architecture="tiny")


# ----------------------------------------------------------------------------------------- refusals
def test_torchscript_needs_the_flag(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    path = save_torchscript(reference[0], tmp_path / "m.pt")
    with pytest.raises(PermissionError, match="allow_torchscript=True"):
        mclip.load(path, activation="quick_gelu")


def test_torchscript_matching_a_registry_digest_is_trusted(
    reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    path = save_torchscript(model, tmp_path / "m.pt")
    entry = W.PretrainedEntry("tiny-ts", "http://127.0.0.1:9/m.pt", sha256(path), architecture="tiny")
    loaded = mclip.load(path, registry={"tiny-ts": entry})  # no flag, no activation: both from the entry
    assert torch.equal(logits(loaded), expected)
    _, info = mclip.load_state_dict_any(path, registry={"tiny-ts": entry})
    assert (info.pretrained, info.activation_source) == ("tiny-ts", "registry entry tiny-ts")


def test_activation_is_never_guessed(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    for path in (
        save_openai(reference[0], tmp_path / "m.pt"),
        save_open_clip(reference[0], tmp_path / "oc.pt"),
        save_hf_bare(reference[0], tmp_path / "bare" / "model.safetensors"),
    ):
        with pytest.raises(mclip.MissingFieldError, match=r"vision\.activation.*activation='quick_gelu' \| 'gelu'"):
            mclip.load(path, heads=1, eps=1e-5, text_causal=True, text_pool="argmax", vision_pool="tok")
        # with every field given one by one, it loads
        loaded = mclip.load(path, heads=1, eps=1e-5, text_causal=True, text_pool="argmax", vision_pool="tok",
                            activation="quick_gelu")
        assert torch.equal(logits(loaded), reference[1])


def test_heads_are_never_guessed(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    """Without a config, the heads (and every other field the shapes do not show) must be passed."""
    path = save_openai(reference[0], tmp_path / "m.pt")
    with pytest.raises(mclip.MissingFieldError, match=r"vision\.heads, text\.heads.*heads=\(vision_heads, text_heads\)"):
        mclip.load(path, activation="quick_gelu")
    with pytest.raises(ValueError, match="architecture='ViT-B/16' has vision/text widths"):
        mclip.load(path, architecture="ViT-B/16")


def test_plain_state_dict_matching_a_registry_digest_needs_no_activation(
    reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    path = save_openai(model, tmp_path / "m.pt")
    entry = W.PretrainedEntry("tiny-sd", "http://127.0.0.1:9/m.pt", sha256(path), architecture="tiny")
    assert torch.equal(logits(mclip.load(path, registry={"tiny-sd": entry})), expected)


def test_unknown_layout_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"backbone.stem.weight": torch.zeros(2), "head.fc.bias": torch.zeros(2)}, path)
    with pytest.raises(UnknownLayoutError, match=r"backbone\.stem\.weight.*Hugging Face CLIPModel"):
        mclip.load(path, activation="quick_gelu")
    custom = tmp_path / "custom_text.pt"
    torch.save(
        {"text.transformer.resblocks.0.ln_1.weight": torch.zeros(2), "visual.conv1.weight": torch.zeros(2)},
        custom,
    )
    with pytest.raises(UnknownLayoutError, match="custom-text"):
        mclip.load(custom, activation="gelu")


class _Payload:
    """Anything that is not a tensor, dict or plain value must not be unpickled."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        mclip.load(path, activation="quick_gelu")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "ViT-X.pt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mclip.load(path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mclip.load(str(path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mclip.load_state_dict_any(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("visual.ln_post.bias"), r"missing \(1\).*visual\.ln_post\.bias"),
        (lambda sd: sd.__setitem__("visual.extra", torch.zeros(1)), r"unexpected \(1\).*visual\.extra"),
        (
            lambda sd: sd.__setitem__("visual.ln_post.weight", torch.zeros(65)),
            r"shape mismatch.*visual\.ln_post",
        ),
    ],
)
def test_loading_is_strict(
    edit: Callable[[dict[str, torch.Tensor]], Any],
    message: str,
    reference: tuple[CLIP, torch.Tensor],
    tmp_path: Path,
) -> None:
    sd = dict(reference[0].state_dict())
    edit(sd)
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(RuntimeError, match=message):
        mclip.load(tmp_path / "m.pt", architecture="tiny")


# ----------------------------------------------------------------------------------------- registry
def test_registry_entries() -> None:
    assert mclip.list_pretrained() == ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
    for name in mclip.list_pretrained():
        entry = mclip.get_pretrained(name)
        assert entry.url.startswith("https://openaipublic.azureedge.net/clip/models/")
        assert entry.url.split("/")[-2] == entry.sha256  # OpenAI puts the file's digest in its URL
        assert entry.filename == name.replace("/", "-").replace("@", "-") + ".pt"
        assert entry.activation == "quick_gelu"
        assert get_config(entry.architecture).vision.image_size == entry.image_size
    assert mclip.get_pretrained("vit-b-16") is mclip.get_pretrained("ViT-B/16")
    with pytest.raises(KeyError, match="ViT-B/32"):
        mclip.get_pretrained("RN50")


def test_vit_l14_builds_with_openai_parameter_count() -> None:
    config = get_config("ViT-L/14")
    with torch.device("meta"):
        model = build_model(config)

    def tower(w: int, layers: int) -> int:
        h = int(w * 4)
        return layers * (3 * w * w + 3 * w + w * w + w + 4 * w + w * h + h + h * w + w)

    v, t, e = config.vision, config.text, config.embed_dim
    vision = 3 * v.patch_size**2 * v.width + v.width + v.num_positions * v.width + 4 * v.width + v.width * e
    text = t.vocab_size * t.width + t.context_length * t.width + 2 * t.width + t.width * e + 1
    expected = vision + tower(v.width, v.layers) + text + tower(t.width, t.layers)
    assert sum(p.numel() for p in model.parameters()) == expected == 427_616_513


def test_lazy_exports() -> None:
    assert callable(mclip.get_tokenizer) and callable(mclip.build_transform)
    assert {
        "load",
        "CLIP",
        "CLIPConfig",
        "get_config",
        "list_architectures",
        "build_model",
        "list_pretrained",
    } <= set(mclip.__all__)
    with pytest.raises(AttributeError):
        _ = mclip.no_such_thing


# ----------------------------------------------------------------------------------------- downloads
@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A static file server on 127.0.0.1 that records the paths requested."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state = {"up": True}

    def stop() -> None:
        if state["up"]:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
            state["up"] = False

    yield SimpleNamespace(
        root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=requests, stop=stop
    )
    stop()


def served_entry(
    server: SimpleNamespace,
    model: CLIP,
    digest: str | None = "auto",
    writer: Callable[[CLIP, Path], Path] = save_torchscript,
) -> W.PretrainedEntry:
    """Serve ``model`` (an OpenAI-style TorchScript archive by default) and register it as ``tiny-test``."""
    path = writer(model, server.root / "tiny-test.pt")
    return W.PretrainedEntry(
        "tiny-test",
        f"{server.url}/tiny-test.pt",
        sha256(path) if digest == "auto" else digest,
        architecture="tiny",
    )


def test_download_once_then_cache(
    server: SimpleNamespace,
    reference: tuple[CLIP, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, expected = reference
    registry = {"tiny-test": served_entry(server, model)}
    cache = tmp_path / "cache"
    loaded = mclip.load("tiny-test", cache_dir=cache, registry=registry)
    assert torch.equal(logits(loaded), expected)
    assert "tiny-test.pt" in capsys.readouterr().err  # the tqdm bar
    assert server.requests == ["/tiny-test.pt"]
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-test.pt", "tiny-test.pt.sha256"]

    server.stop()
    again = mclip.load("TINY_test", cache_dir=cache, registry=registry)  # names match loosely
    assert torch.equal(logits(again), expected)
    assert server.requests == ["/tiny-test.pt"]


def test_cached_file_is_not_rehashed(
    server: SimpleNamespace,
    reference: tuple[CLIP, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = {"tiny-test": served_entry(server, reference[0])}
    W.fetch_pretrained(registry["tiny-test"], cache_dir=tmp_path, progress=False)
    calls: list[int] = []
    monkeypatch.setattr(W, "hashlib", SimpleNamespace(sha256=lambda: calls.append(1) or hashlib.sha256()))
    assert W.fetch_pretrained(registry["tiny-test"], cache_dir=tmp_path) == tmp_path / "tiny-test.pt"
    assert calls == []
    (tmp_path / "tiny-test.pt").touch()  # a new mtime invalidates the remembered digest
    W.fetch_pretrained(registry["tiny-test"], cache_dir=tmp_path)
    assert calls == [1]


def test_checksum_mismatch_sets_file_aside(
    server: SimpleNamespace, reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    entry = served_entry(server, reference[0], digest="0" * 64)
    actual = sha256(server.root / "tiny-test.pt")
    cache = tmp_path / "cache"
    for attempt in (1, 2):  # the bad file is never used: the second load downloads (and fails) again
        with pytest.raises(W.ChecksumError, match=rf"kept aside as .*tiny-test\.pt\.corrupt-{actual[:8]}"):
            mclip.load("tiny-test", cache_dir=cache, registry={"tiny-test": entry}, progress=False)
        assert len(server.requests) == attempt
        assert sorted(p.name for p in cache.iterdir()) == [f"tiny-test.pt.corrupt-{actual[:8]}"]


def test_corrupted_cache_is_set_aside_and_fetched_again(
    server: SimpleNamespace, reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    registry = {"tiny-test": served_entry(server, model)}
    cached = W.fetch_pretrained(registry["tiny-test"], cache_dir=tmp_path, progress=False)
    cached.write_bytes(b"truncated")
    bad = hashlib.sha256(b"truncated").hexdigest()[:8]
    loaded = mclip.load("tiny-test", cache_dir=tmp_path, registry=registry, progress=False)
    assert torch.equal(logits(loaded), expected)
    assert (tmp_path / f"tiny-test.pt.corrupt-{bad}").read_bytes() == b"truncated"
    assert len(server.requests) == 2

    cached.write_bytes(b"broken again")
    server.stop()
    with pytest.raises(W.WeightsUnavailableError, match="moved to .*corrupt-"):
        mclip.load("tiny-test", cache_dir=tmp_path, registry=registry, progress=False)
    assert not cached.exists()


def test_offline_error_says_what_to_put_where(reference: tuple[CLIP, torch.Tensor], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip/models/x/tiny-test.pt"
    entry = W.PretrainedEntry("tiny-test", url, "1" * 64, architecture="tiny")
    with pytest.raises(W.WeightsUnavailableError) as err:
        mclip.load("tiny-test", cache_dir=tmp_path / "c", registry={"tiny-test": entry})
    assert str(tmp_path / "c" / "tiny-test.pt") in str(err.value)
    assert url in str(err.value)
    assert not any((tmp_path / "c").iterdir())  # no .partial left behind


def test_cache_env_var(
    server: SimpleNamespace,
    reference: tuple[CLIP, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "env"))
    assert W.default_cache_dir() == tmp_path / "env" / "clip"
    registry = {"tiny-test": served_entry(server, reference[0])}
    mclip.load("tiny-test", registry=registry, progress=False)
    assert (tmp_path / "env" / "clip" / "tiny-test.pt").is_file()
    monkeypatch.delenv("MMPROMPT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert W.default_cache_dir() == tmp_path / "home" / ".cache" / "mmprompt" / "clip"


def test_entry_without_checksum_needs_verify_false(
    server: SimpleNamespace, reference: tuple[CLIP, torch.Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    entry = served_entry(server, model, digest=None, writer=save_openai)
    with pytest.raises(W.ChecksumError, match="verify=False"):
        mclip.load("tiny-test", cache_dir=tmp_path, registry={"tiny-test": entry})
    assert server.requests == []
    loaded = mclip.load(
        "tiny-test", cache_dir=tmp_path, registry={"tiny-test": entry}, verify=False, progress=False
    )
    assert torch.equal(logits(loaded), expected)


def test_matches_transformers_clipmodel(tmp_path: Path) -> None:
    """Parity with transformers' CLIPModel (the reference for the Hugging Face layout), where installed."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.CLIPConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 1000,
            "hidden_act": "gelu",
            "bos_token_id": SOT,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 96,
            "intermediate_size": 384,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "gelu",
        },
        projection_dim=48,
    )
    hf = transformers.CLIPModel(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    ours = mclip.load(tmp_path / "hf")
    images, tokens = inputs(ours.config)
    with torch.no_grad():
        expected = hf(input_ids=tokens, pixel_values=images).logits_per_image
        torch.testing.assert_close(ours(images, tokens), expected, atol=1e-5, rtol=1e-5)


def test_predictor_uses_the_preprocessing_of_the_weights(tmp_path: Path) -> None:
    """A squash resize and statistics stated beside the weights reach the Predictor with no user input."""
    from mmprompt import Predictor

    model = make_model(get_config("tiny"))
    folder = tmp_path / "dfn"
    folder.mkdir()
    save_open_clip_safetensors(model, folder / "open_clip_model.safetensors")
    pre = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear", "resize_mode": "squash"}
    config = {"model_cfg": open_clip_model_cfg(model.config), "preprocess_cfg": pre}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    transform = Predictor.zero_shot(folder, ["cat", "dog"]).transform
    assert (transform.resize_mode, transform.interpolation, transform.mean, transform.std) == (
        "squash", "bilinear", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert transform.size == model.config.vision.image_size


def test_list_models_marks_the_test_only_architectures() -> None:
    models = mclip.list_models()
    assert set(models) == set(mclip.list_architectures())
    for name in ("tiny", "tiny-parity"):
        assert models[name].startswith("test-only")
    assert not any(models[n].startswith("test-only") for n in mclip.list_architectures(include_test_only=False))
    assert {"ViT-H/14", "ViT-g/14", "ViT-bigG/14"} <= set(mclip.list_architectures(include_test_only=False))


def test_architectures_have_named_fields() -> None:
    vit_l = get_config("ViT-L/14")
    assert (vit_l.vision.width, vit_l.vision.layers, vit_l.vision.heads, vit_l.vision.patch_size) == (1024, 24, 16, 14)
    assert (vit_l.text.width, vit_l.text.layers, vit_l.text.heads, vit_l.embed_dim) == (768, 12, 12, 768)
    assert get_config("ViT-bigG/14").text.heads == 20 and get_config("ViT-bigG/14").vision.heads == 16


def test_prompt_positions_and_fast_paths_follow_the_text_tower() -> None:
    """Causal towers with a start token: prompts after it, fast paths exact; bidirectional: neither."""
    causal = build_model(TINY)
    assert (causal.prompt_start, causal.text_fast_paths_exact) == (1, True)
    bidirectional = build_model(TINY.replace(text=dataclasses.replace(TINY.text, causal=False, start_token=False,
                                                                      pool="last")))
    assert (bidirectional.prompt_start, bidirectional.text_fast_paths_exact) == (0, False)
    tokens = inputs(TINY)[1]
    assert bidirectional.text_pool_index(tokens).tolist() == [TINY.text.context_length - 1] * 3
    assert causal.text_pool_index(tokens).tolist() == [4, 8, 13]
