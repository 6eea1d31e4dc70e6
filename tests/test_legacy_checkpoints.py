"""Checkpoints and training states written before the ``trainable`` rename (names ``prompt.*``) still load.

``tests/data/legacy_v0`` was written by the code before the rename (its README says how); every number
compared here is that code's output, read from the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmprompt.checkpoint import load_prompts
from mmprompt.cli import main
from mmprompt.demo.world import demo_classnames, generate_demo_dataset
from mmprompt.engine.checkpoint import load_state, save_state
from mmprompt.methods import legacy_name
from mmprompt.predict import Predictor

LEGACY = Path(__file__).parent / "data" / "legacy_v0"
EXTRA = {"coop": ["method.n_ctx=4"], "maple": ["method.n_ctx=2", "method.depth=2"],
         "dept": ["method.base=maple", "method.base_options.n_ctx=2", "method.base_options.depth=2"]}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("legacy_demo")
    generate_demo_dataset(root, seed=0, per_class_train=2, per_class_val=0, per_class_test=2)
    return root


def train_args(method: str, root: Path, output: Path) -> list[str]:
    return ["train", "--method", method, "--dataset", "mmprompt_demo", "--data-root", str(root), "--clip", "demo",
            "--output", str(output), "--shots", "2", "--no-progress", "--device", "cpu", "--subsample", "base",
            "--set", "optim.epochs=2", "optim.warmup_epochs=0", "optim.batch_size=8", *EXTRA[method]]


def test_the_files_hold_former_names() -> None:
    keys = set(load_file(str(LEGACY / "dept" / "prompts.safetensors")))
    assert "prompt.base.prompt.ctx" in keys and "prompt.head.weight" in keys
    assert not any(k.startswith("trainable.") for k in keys)


@pytest.mark.parametrize("method", ["coop", "maple", "dept"])
def test_old_prompt_checkpoints_predict_the_same_logits(method: str) -> None:
    ref = np.load(LEGACY / "logits.npz")
    images = list(ref["images"])
    predictor = Predictor.from_checkpoint(LEGACY / method, clip="demo")
    names = {n for n, _ in predictor.learner.named_parameters() if _.requires_grad}
    assert names and all(n.startswith("trainable.") for n in names)
    assert names == {n for n in predictor.learner.named_trainable()}
    np.testing.assert_allclose(predictor.logits(images).numpy(), ref[f"{method}/trained"], rtol=1e-6, atol=1e-6)
    predictor.set_classes(demo_classnames())  # novel classes too (DePT: the base learner's logits alone)
    np.testing.assert_allclose(predictor.logits(images).numpy(), ref[f"{method}/all"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["coop", "dept"])
def test_old_checkpoints_evaluate_to_the_recorded_accuracy(method: str, demo_root: Path, tmp_path: Path) -> None:
    recorded = json.loads((LEGACY / method / "metrics.json").read_text())["eval"]
    for subsample, split in (("base", "base"), ("new", "novel")):
        out = tmp_path / f"{subsample}.json"
        assert main(["eval", "--checkpoint", str(LEGACY / method), "--dataset", "mmprompt_demo", "--data-root",
                     str(demo_root), "--subsample", subsample, "--device", "cpu", "--no-progress",
                     "--output", str(out)]) == 0
        got = json.loads(out.read_text())
        assert got["method"] == method and got["subsample"] == subsample
        assert got["correct"] == recorded[split]["correct"] and got["total"] == recorded[split]["total"]
        assert got["per_class_accuracy"] == recorded[split]["per_class_accuracy"]


@pytest.mark.parametrize("method", ["coop", "dept"])
def test_old_training_states_resume_exactly(method: str, demo_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(LEGACY / f"{method}_epoch1", run)
    assert all(k.startswith("prompt.") for k in load_state(run / "checkpoint" / "state.pt")["prompts"])
    assert main([*train_args(method, demo_root, run), "--resume"]) == 0
    old = load_file(str(LEGACY / method / "prompts.safetensors"))
    new = load_file(str(run / "prompts.safetensors"))
    assert sorted(legacy_name(k) for k in new) == sorted(old)
    for name, value in new.items():
        torch.testing.assert_close(value, old[legacy_name(name)], rtol=0, atol=1e-6)
    recorded = json.loads((LEGACY / method / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] == 1
    assert metrics["train"]["final_loss"] == pytest.approx(recorded["train"]["final_loss"], rel=1e-5)
    for split in ("base", "novel"):
        assert metrics["eval"][split]["per_class_accuracy"] == recorded["eval"][split]["per_class_accuracy"]
    # the finished run's prompts load under the current names
    assert set(load_prompts(run, _demo_clip()).prompt_state_dict()) == set(new)


def test_a_training_state_with_foreign_names_is_refused_in_one_line(demo_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "coop_epoch1", run)
    path = run / "checkpoint" / "state.pt"
    state = load_state(path)
    state["prompts"] = {"learner.ctx": state["prompts"]["prompt.ctx"]}
    save_state(path, {k: v for k, v in state.items() if k != "version"})
    assert main([*train_args("coop", demo_root, run), "--resume"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert str(path) in err[0] and "learner.ctx" in err[0] and "trainable.ctx" in err[0]
    assert "Traceback" not in "\n".join(err)


def _demo_clip():  # noqa: ANN202
    from mmprompt.engine.clip_source import resolve_clip

    return resolve_clip("demo", None, "cpu")[0]


def test_a_method_table_written_with_former_names_still_passes_parity() -> None:
    """A plug-in whose official names map to ``prompt.*`` (written before the rename) imports and checks."""
    import dataclasses

    from mmprompt.methods import get_method, register, unregister
    from mmprompt.methods.maple import OFFICIAL_NAMES
    from mmprompt.parity import check_method_case, load_reference, reference_clip

    former = {pattern: target.replace("trainable.", "prompt.") for pattern, target in OFFICIAL_NAMES.items()}
    assert all(t.startswith("prompt.") for t in former.values())
    register(dataclasses.replace(get_method("maple"), name="maple_former", official_names=former, aliases=(),
                                 presets={}))
    try:
        ref = load_reference(Path(__file__).parent / "data" / "official_reference.npz")
        ref.meta = {**ref.meta, "cases": {**ref.meta["cases"], "maple": {**ref.meta["cases"]["maple"],
                                                                          "method": "maple_former"}}}
        result = check_method_case(ref, reference_clip(ref), "maple")
    finally:
        unregister("maple_former")
    assert result.ok, [c for c in result.checks if not c.ok] or result.error
    assert sum(c.name.startswith("grad/") for c in result.checks) == sum(k.startswith("maple/grad/") for k in ref.arrays)
