"""Prompt checkpoints and the import of official (Dassl) checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmprompt.checkpoint import load_prompts, read_prompt_meta, save_prompts
from mmprompt.cli import main
from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.errors import CheckpointError
from mmprompt.methods import create_learner
from mmprompt.parity import load_reference, reference_clip
from test_engine_support import official_custom_clip_state

REFERENCE = Path(__file__).parent / "data" / "official_reference.npz"


@pytest.fixture(scope="module")
def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_config("tiny")).eval()


METHOD_CONFIGS = {
    "maple": {"depth": 3},
    "ivlp": {"depth_text": 2, "depth_vision": 3},
    "language_only": {"depth_text": 3},
    "vpt": {"depth_vision": 2, "n_ctx_vision": 4},
    "coop": {"n_ctx": 4},
    "cocoop": {},
}


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_roundtrip_and_new_classnames(method: str, tiny_clip: CLIP, tmp_path: Path) -> None:
    torch.manual_seed(1)
    learner = create_learner(method, tiny_clip, ["cat", "dog", "tiny_bird"], METHOD_CONFIGS[method])
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(torch.randn_like(p))
    out = save_prompts(learner, tmp_path / "ckpt", clip_info={"name": "tiny", "sha256": "0" * 64})
    meta = read_prompt_meta(out)
    assert meta["method"] == method and meta["classnames"] == ["cat", "dog", "tiny_bird"]
    assert meta["clip"]["sha256"] == "0" * 64 and meta["versions"]["torch"] == torch.__version__
    assert meta["num_trainable"] == sum(p.numel() for p in learner.trainable_parameters())
    images = torch.randn(2, 3, 32, 32)
    restored = load_prompts(out, tiny_clip)
    for (n1, p1), (n2, p2) in zip(learner.prompt_state_dict().items(), restored.prompt_state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(images), learner.eval()(images), rtol=0, atol=0)
        # the same prompts on other class names equal a learner built for those names directly
        novel = load_prompts(out, tiny_clip, classnames=["horse", "frog"])
        direct = create_learner(method, tiny_clip, ["horse", "frog"], METHOD_CONFIGS[method])
        direct.load_prompt_state_dict(learner.prompt_state_dict())
        torch.testing.assert_close(novel.eval()(images), direct.eval()(images), rtol=0, atol=0)
        assert novel(images).shape == (2, 2)


def test_checkpoint_holds_prompts_only(tiny_clip: CLIP, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    learner = create_learner("maple", tiny_clip, ["a", "b"], {"depth": 2})
    save_prompts(learner, tmp_path)
    keys = set(load_file(str(tmp_path / "prompts.safetensors")))
    assert keys == {n for n, p in learner.named_parameters() if p.requires_grad}
    assert all(k.startswith("trainable.") for k in keys)


def test_class_specific_coop_refuses_other_classnames(tiny_clip: CLIP, tmp_path: Path) -> None:
    learner = create_learner("coop", tiny_clip, ["a", "b"], {"n_ctx": 2, "class_specific": True})
    save_prompts(learner, tmp_path)
    assert load_prompts(tmp_path, tiny_clip).trainable.ctx.shape == (2, 2, 64)
    with pytest.raises(ValueError, match="class-specific"):
        load_prompts(tmp_path, tiny_clip, classnames=["c", "d"])


def test_strict_loading_and_clear_errors(tiny_clip: CLIP, tmp_path: Path) -> None:
    learner = create_learner("maple", tiny_clip, ["a", "b"], {"depth": 3})
    save_prompts(learner, tmp_path)
    meta = json.loads((tmp_path / "prompts.json").read_text())
    meta["config"]["depth"] = 2  # fewer deep prompts than the file holds
    (tmp_path / "prompts.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unexpected"):
        load_prompts(tmp_path, tiny_clip)
    with pytest.raises(CheckpointError, match="prompts.json"):
        read_prompt_meta(tmp_path / "nothing")
    other = CLIP(get_config("tiny-parity"))
    meta["config"]["depth"] = 3
    (tmp_path / "prompts.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another CLIP architecture"):
        load_prompts(tmp_path, other)


def _official_checkpoint(ref, case: str, root: Path, folder: str, strip_prefix: bool) -> Path:
    """A Dassl checkpoint in the official layout: prompts + frozen CLIP + class-dependent buffers."""
    state = official_custom_clip_state(ref, case)
    if strip_prefix:
        state = {k.removeprefix("prompt_learner."): v for k, v in state.items() if k.startswith("prompt_learner.")}
    path = root / folder / "model.pth.tar-5"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 5, "optimizer": {}, "scheduler": {}}, path)
    (root / folder / "model.pth.tar-2").write_bytes(b"older epochs are ignored")
    return path


@pytest.mark.parametrize(
    "case,method,folder,strip",
    [
        ("maple", "maple", "MultiModalPromptLearner", False),
        ("ivlp", "ivlp", "VLPromptLearner", False),
        ("vpt", "vpt", "VLPromptLearner", False),
        ("coop", "coop", "prompt_learner", True),
        ("cocoop", "cocoop", "prompt_learner", True),
    ],
)
def test_import_official_gives_reference_logits(case, method, folder, strip, tmp_path: Path) -> None:
    ref = load_reference(REFERENCE)
    _official_checkpoint(ref, case, tmp_path / "official", folder, strip)
    config = ref.meta["cases"][case]["official_config"]
    sets = []
    if "CTX_INIT" in config:
        sets.append(f"ctx_init={config['CTX_INIT']!r}" if config["CTX_INIT"] else "ctx_init=''")
    out = tmp_path / "imported"
    argv = ["import-official", str(tmp_path / "official"), "--method", method, "-o", str(out),
            "--arch", "tiny-parity"]
    assert main(argv + (["--set", *sets] if sets else [])) == 0
    meta = read_prompt_meta(out)
    assert meta["method"] == method and meta["classnames"] == []
    assert meta["clip"]["imported_from"].endswith("model.pth.tar-5")
    clip = reference_clip(ref)
    learner = load_prompts(out, clip, classnames=ref.meta["classnames"]).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    expected = torch.from_numpy(ref.arrays[f"{case}/logits"])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_import_official_missing_checkpoint_names_expected_path(tmp_path: Path) -> None:
    from mmprompt.official import find_official_checkpoint

    with pytest.raises(FileNotFoundError, match="MultiModalPromptLearner/model.pth.tar-<epoch>"):
        find_official_checkpoint(tmp_path, "maple")


def test_import_official_on_another_architecture_says_which_arch(tmp_path: Path, capsys) -> None:
    """CoOp prompts of a ViT-L/14 (text width 768) imported with the default --arch ViT-B/16: one line that
    names --arch, instead of a list of shape mismatches."""
    folder = tmp_path / "official" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"ctx": torch.zeros(16, 768)}, "epoch": 5}, folder / "model.pth.tar-5")
    code = main(["import-official", str(tmp_path / "official"), "--method", "coop", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 4, err
    first = err.strip().splitlines()[0]
    assert first.startswith("mmprompt import-official: error (checkpoint): ")
    assert "trained on another CLIP architecture" in first and "pass --arch ViT-L/14" in first
    assert "checkpoint (16, 768) vs (16, 512)" in first
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the message and the --debug hint
