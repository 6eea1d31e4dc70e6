"""``hf-hub:ORG/NAME[@REVISION]`` weights, read offline from a Hugging Face cache populated here.

The cache is written in huggingface_hub's own layout (``models--ORG--NAME/{blobs,snapshots/<commit>,refs}``,
snapshot files are links to blobs, as the Hub client stores them; ``scan_cache_dir`` must recognise it);
the loads then go through huggingface_hub's resolution with ``HF_HUB_OFFLINE=1``. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mmprompt.clip as mclip
from mmprompt.clip import CLIP, get_config
from mmprompt.clip import hub as clip_hub
from mmprompt.clip.describe import UnsupportedCheckpointError
from mmprompt.clip.openclip import open_clip_config
from mmprompt.clip.weights import WeightsUnavailableError
from test_engine_support import make_data_root

huggingface_hub = pytest.importorskip("huggingface_hub")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache: Path, repo: str, files: Path, commit: str = COMMIT, refs: tuple[str, ...] = ("main",)) -> None:
    """Store the files of the folder ``files`` as revision ``commit`` of ``repo`` in the hub cache ``cache``."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()  # the Hub names large (LFS) blobs by their SHA-256
        (repo_dir / "blobs" / blob).write_bytes(data)
        (repo_dir / "snapshots" / commit / f.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)


def tiny_hf_clip(folder: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6,
                       "image_size": 32, "patch_size": 8},
        projection_dim=24)
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def tiny_open_clip(folder: Path) -> tuple[Path, CLIP]:
    """A tiny CLIP stored as an open_clip Hub repository: open_clip_config.json + open_clip_model.safetensors."""
    torch.manual_seed(1)
    model = CLIP(get_config("tiny")).eval()
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(open_clip_config(model.config)))
    # a timm-style vision-only file beside it, as timm/* repositories have: it must not be picked
    save_file({"unrelated": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny", "num_classes": 0}))
    return folder, model


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def features(model: CLIP) -> torch.Tensor:
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return model.encode_image(images)


def test_transformers_repository_loads_offline_from_the_cache(tmp_path: Path, hf_home: Path) -> None:
    folder = tiny_hf_clip(tmp_path / "made")
    put_in_hub_cache(hf_home / "hub", "tiny-org/tiny-clip", folder, refs=("main", "v1"))
    cached = huggingface_hub.scan_cache_dir(hf_home / "hub")  # the layout is the Hub client's own
    assert [r.repo_id for r in cached.repos] == ["tiny-org/tiny-clip"]
    assert {rev.commit_hash for r in cached.repos for rev in r.revisions} == {COMMIT}
    direct = mclip.load(folder)
    for spec in ("hf-hub:tiny-org/tiny-clip", "hf-hub:tiny-org/tiny-clip@v1", f"hf-hub:tiny-org/tiny-clip@{COMMIT}"):
        model = mclip.load(spec)
        assert model.weights_info.hub == f"hf-hub:tiny-org/tiny-clip@{COMMIT}"
        assert model.weights_info.source_layout == "hf"
        torch.testing.assert_close(features(model), features(direct), rtol=0, atol=0)


def test_open_clip_repository_loads_its_open_clip_weights(tmp_path: Path, hf_home: Path) -> None:
    folder, model = tiny_open_clip(tmp_path / "made")
    put_in_hub_cache(hf_home / "hub", "tiny-org/tiny-open-clip", folder)
    loaded = mclip.load("hf-hub:tiny-org/tiny-open-clip")
    assert loaded.weights_info.weights_file.name == "open_clip_model.safetensors"
    assert loaded.weights_info.sources["vision.heads"].startswith("open_clip_config.json")
    torch.testing.assert_close(features(loaded), features(model), rtol=1e-5, atol=1e-6)


def test_open_clip_style_names_map_to_their_repository_and_config_fields_are_checked(
        tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, model = tiny_open_clip(tmp_path / "made")
    put_in_hub_cache(hf_home / "hub", "tiny-org/tiny-open-clip", folder)
    cfg = model.config
    good = clip_hub._oc("Tiny-8/test", "tiny-org/tiny-open-clip", "clip", "1M", "MIT", cfg.embed_dim,
                        cfg.vision.patch_size, cfg.vision.image_size)
    bad = clip_hub._oc("Tiny-8/wrong", "tiny-org/tiny-open-clip", "clip", "1M", "MIT", 999, 8, 32)
    monkeypatch.setitem(clip_hub.HUB_MODELS, good.name, good)
    monkeypatch.setitem(clip_hub.HUB_MODELS, bad.name, bad)
    assert mclip.load("Tiny-8/test").weights_info.hub == f"hf-hub:tiny-org/tiny-open-clip@{COMMIT}"
    with pytest.raises(UnsupportedCheckpointError, match=r"model_cfg.embed_dim = 32, but Tiny-8/wrong .* 999"):
        mclip.load("Tiny-8/wrong")


def test_the_table_maps_the_usual_open_clip_names() -> None:
    assert clip_hub.parse_hub_spec("ViT-B-16/laion2b_s34b_b88k")[0] == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    # open_clip's SigLIP names map to Google's transformers releases of the same weights (timm towers are refused)
    assert clip_hub.parse_hub_spec("ViT-SO400M-14-SigLIP")[0] == "google/siglip-so400m-patch14-224"
    assert all(m.layout == "transformers" for m in clip_hub.HUB_MODELS.values() if m.family == "siglip")
    assert clip_hub.parse_hub_spec("hf-hub:a/b@c")[:2] == ("a/b", "c")
    with pytest.raises(ValueError, match="hf-hub:ORG/NAME"):
        clip_hub.parse_hub_spec("hf-hub:no-org")


def test_transformers_fields_left_out_of_config_json_are_checked_at_their_defaults(
        tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny_hf_clip(tmp_path / "made")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"].pop("image_size", None)  # transformers' default: 224
    (folder / "config.json").write_text(json.dumps(config))
    put_in_hub_cache(hf_home / "hub", "tiny-org/tiny-clip", folder)
    wrong = clip_hub.HubModel("tiny/wrong", "tiny-org/tiny-clip", "transformers", "clip", "1M", "MIT",
                              {"model_type": "clip", "vision_config.image_size": 32})
    monkeypatch.setitem(clip_hub.HUB_MODELS, wrong.name, wrong)
    with pytest.raises(UnsupportedCheckpointError, match=r"vision_config.image_size = 224, but tiny/wrong"):
        mclip.load("tiny/wrong")


def test_a_missing_revision_offline_is_a_clear_error(tmp_path: Path, hf_home: Path) -> None:
    put_in_hub_cache(hf_home / "hub", "tiny-org/tiny-clip", tiny_hf_clip(tmp_path / "made"))
    with pytest.raises(WeightsUnavailableError, match=r"revision 'v2' is not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        mclip.load("hf-hub:tiny-org/tiny-clip@v2")
    with pytest.raises(WeightsUnavailableError, match="the repository is not in the Hugging Face cache"):
        mclip.load("hf-hub:tiny-org/absent")


def test_a_repository_of_another_kind_is_refused(tmp_path: Path, hf_home: Path) -> None:
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (other / "README.md").write_text("a text model")
    put_in_hub_cache(hf_home / "hub", "tiny-org/bert", other)
    with pytest.raises(UnsupportedCheckpointError, match="neither an open_clip repository .* nor a transformers"):
        mclip.load("hf-hub:tiny-org/bert")


def test_weights_list_prints_every_known_name(capsys: pytest.CaptureFixture[str]) -> None:
    from mmprompt.cli import main

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name, model in clip_hub.HUB_MODELS.items():
        line = next(line for line in out.splitlines() if name in line)
        assert model.family in line and model.params in line and model.licence in line
    assert "ViT-B/16" in out


def test_train_with_hf_hub_clip_offline_through_the_cli(tmp_path: Path, hf_home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mmprompt.cli import main

    put_in_hub_cache(hf_home / "hub", "tiny-org/tiny-clip", tiny_hf_clip(tmp_path / "made"))
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))
    root = make_data_root(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--config", "maple_b2n", "--dataset", "eurosat", "--data-root", str(root),
                 "--clip", "hf-hub:tiny-org/tiny-clip", "--output", str(run), "--shots", "2", "--num-workers", "0",
                 "--device", "cpu", "--no-progress", "--set", "optim.epochs=1", "method.depth=2", "log.every=1"]) == 0
    recorded = "\n".join(p.read_text(errors="replace") for p in run.rglob("*") if p.suffix in (".json", ".yaml"))
    assert f"hf-hub:tiny-org/tiny-clip@{COMMIT}" in recorded
    # the prompts reload the same weights by their recorded commit, still offline
    assert main(["eval", "--checkpoint", str(run), "--dataset", "eurosat", "--data-root", str(root),
                 "--subsample", "new", "--num-workers", "0", "--device", "cpu", "--no-progress"]) == 0


def test_only_prefixed_ids_and_table_names_are_hub_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert clip_hub.is_hub_name("hf-hub:openai/clip-vit-base-patch16")
    assert clip_hub.is_hub_name("ViT-B-16/laion2b_s34b_b88k")
    assert not clip_hub.is_hub_name("openai/clip-vit-base-patch16")  # a repository id alone may be a local folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ViT-B-16").mkdir()
    (tmp_path / "ViT-B-16" / "laion2b_s34b_b88k").mkdir()
    assert not clip_hub.is_hub_name("ViT-B-16/laion2b_s34b_b88k")  # an existing path wins
