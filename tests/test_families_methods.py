"""Every method runs on every loadable family: a tiny SigLIP folder made by transformers (bidirectional text
tower, no start token, last-position pooling) trains one step with each method, prompts go where the tower
puts them, and ``mmprompt train --method maple`` runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmprompt.clip as mclip
from mmprompt.cli import main
from mmprompt.config import load_config
from mmprompt.methods import DatasetContext, create_learner, get_method, list_methods
from test_engine_support import make_data_root, official_teacher_for
from test_hf_families import IMAGE, perturbed, siglip_config, write_siglip_tokenizer

transformers = pytest.importorskip("transformers")
NAMES = ["cat", "dog", "red car"]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("siglip4")
    config = siglip_config(num_hidden_layers=4, max_position_embeddings=40)
    config.vision_config.num_hidden_layers = 4
    perturbed(transformers.SiglipModel(config)).save_pretrained(folder)
    write_siglip_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": IMAGE, "width": IMAGE}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
    }))
    return folder


@pytest.fixture(scope="module")
def siglip(siglip_dir: Path) -> mclip.CLIP:
    return mclip.load(siglip_dir).eval()


def _labels(learner) -> torch.Tensor:
    """Labels for two images; a transductive learner gets the object that refuses to be read."""
    from mmprompt.methods import NoLabels

    return NoLabels(2) if learner.transductive else torch.tensor([0, 2])


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_one_step_on_siglip(siglip: mclip.CLIP, method: str) -> None:
    spec = get_method(method)
    options = load_config(spec.preset_for("base2novel"), list(spec.demo_overrides)).method.options
    if method == "coop":
        options["n_ctx"] = 4  # the preset's 16 context vectors leave this tiny tower little room
    if method in ("mma", "mmapp"):
        options["adapter_dim"] = 8  # the preset's r = 32 is this tiny text tower's whole width
    if get_method(method).name in ("mmrl", "mmrlpp"):  # representation tokens follow a class token: refused by name
        with pytest.raises(ValueError, match="pooled at its class token"):
            create_learner(method, siglip, NAMES, options, dataset=DatasetContext("eurosat", "a photo of {}."))
        return
    learner = create_learner(method, siglip, NAMES, options, dataset=DatasetContext("eurosat", "a photo of {}."),
                             teacher=official_teacher_for(method, siglip, options))
    images, labels = torch.randn(2, 3, IMAGE, IMAGE), _labels(learner)
    objective = learner.train()(images, labels)
    assert torch.isfinite(objective.total)
    if learner.trainable_parameters():
        objective.total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.trainable_parameters())
    with torch.no_grad():
        assert learner.eval()(images).shape == (2, 3)


def test_prompts_set_to_the_frozen_words_equal_the_plain_encoder(siglip: mclip.CLIP) -> None:
    """No start token: the learned context sits at position 0; with it set to the words' own embeddings, the
    prompted text equals the plain encoder on the same text (the pooled token is the last one)."""
    learner = create_learner("coop", siglip, NAMES, {"ctx_init": "a photo of a"})
    assert siglip.prompt_start == 0 and not siglip.text_fast_paths_exact
    with torch.no_grad():
        got = learner.text_features()
        tokens = learner.tokenize([f"a photo of a {n}." for n in NAMES])
        expected = siglip.encode_text(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mmprompt_train_maple_runs_on_a_siglip_folder(siglip_dir: Path, tmp_path: Path) -> None:
    data = make_data_root(tmp_path / "data")
    argv = ["train", "--method", "maple", "--dataset", "eurosat", "--data-root", str(data), "--clip", str(siglip_dir),
            "--output", str(tmp_path / "run"), "--shots", "2", "--num-workers", "0", "--no-progress",
            "--set", "optim.epochs=1", "method.depth=2"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["method"] == "maple"


@pytest.fixture(scope="module")
def non_causal() -> mclip.CLIP:
    """The tiny CLIP with open_clip's ``no_causal_mask`` text tower pooled at the last position (the layout
    open_clip's ``pool_type: last`` towers use; their loading is checked against open_clip elsewhere)."""
    import dataclasses

    from mmprompt.clip.config import get_config

    base = get_config("tiny")
    config = dataclasses.replace(base, text=dataclasses.replace(base.text, causal=False, pool="last"))
    from mmprompt.clip.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = mclip.CLIP(config).eval()
    model.tokenizer = get_tokenizer()  # open_clip towers of this kind ship CLIP's BPE (their tokenizer.json)
    return model


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_one_step_on_a_non_causal_tower(non_causal: mclip.CLIP, method: str) -> None:
    assert not non_causal.text_fast_paths_exact and non_causal.prompt_start == 1
    spec = get_method(method)
    options = load_config(spec.preset_for("base2novel"), list(spec.demo_overrides)).method.options
    learner = create_learner(method, non_causal, NAMES, options, dataset=DatasetContext("eurosat", "a photo of {}."),
                             teacher=official_teacher_for(method, non_causal, options))
    images, labels = torch.randn(2, 3, 32, 32), _labels(learner)
    objective = learner.train()(images, labels)
    assert torch.isfinite(objective.total)
    if learner.trainable_parameters():
        objective.total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.trainable_parameters())
