"""PromptKD end to end on the demo world: a PromptSRC teacher trained with mmprompt, the transductive student
(train, checkpoint, resume after a stop, evaluate, predict), the no-label guarantee and the bad-input errors.

Parity with the official code is in tests/test_parity.py (tests/data/promptkd_reference.*)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmprompt.checkpoint import load_prompts
from mmprompt.cli import main
from mmprompt.clip import CLIP
from mmprompt.clip.weights import sha256_file
from mmprompt.config import RunConfig
from mmprompt.demo import generate_demo_dataset, load_demo_clip
from mmprompt.errors import CheckpointError
from mmprompt.methods import Teacher, TeacherMismatchError, create_learner
from mmprompt.parity import load_reference, run_parity

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "promptkd_reference.npz"
COMMON = ["--clip", "demo", "--dataset", "mmprompt_demo", "--no-progress", "--set", "data.num_workers=0",
          "data.crop_scale_min=0.5"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo data, two PromptSRC teachers (seeds 1, 2) and one finished 2-epoch PromptKD student."""
    root = tmp_path_factory.mktemp("promptkd")
    data = generate_demo_dataset(root / "data", per_class_train=6, per_class_val=1, per_class_test=4).parent
    teachers = []
    for seed in (1, 2):
        out = root / f"teacher{seed}"
        assert main(["train", "--config", "promptsrc_b2n", *COMMON, "optim.epochs=1", "method.depth_text=3",
                     "method.depth_vision=3", "method.gpa_mean=1", "optim.batch_size=8", "--shots", "4",
                     "--data-root", str(data),
                     "--seed", str(seed), "--output", str(out)]) == 0
        teachers.append(out)
    argv = ["train", "--config", "promptkd_b2n", *COMMON, "optim.epochs=2", "method.depth_vision=3",
            "--data-root", str(data)]
    student = root / "student"
    assert main([*argv, "--teacher", str(teachers[0]), "--output", str(student)]) == 0
    return {"root": root, "data": data, "teachers": teachers, "student": student, "argv": argv}


def test_student_run_is_transductive_and_records_its_teacher(world: dict[str, Any]) -> None:
    metrics = json.loads((world["student"] / "metrics.json").read_text())
    assert metrics["transductive"] is True
    assert metrics["train_images"] == 25 * 6  # the full training split of ALL classes (base and novel)
    assert set(metrics["eval"]) == {"base", "novel"}
    assert metrics["eval"]["base"]["total"] == 13 * 4 and metrics["eval"]["novel"]["total"] == 12 * 4
    assert metrics["train"]["final_acc"] is None  # no labels: no training accuracy
    teacher = world["teachers"][0]
    meta = json.loads((world["student"] / "prompts.json").read_text())
    record = meta["extra"]["teacher"]
    assert record["sha256"] == sha256_file(teacher / "prompts.safetensors")
    assert record["method"] == "promptsrc" and record["source"] == str(teacher)
    # the checkpoint holds the student only: prompts, projector and its BatchNorm statistics, no teacher tensor
    saved = load_file(str(world["student"] / "prompts.safetensors"))
    # (the prompts are the inner ivlp learner's, at trainable.image_encoder; the projector is PromptKD's own)
    assert all(k.startswith(("trainable.image_encoder.trainable.vision_", "trainable.projector.")) for k in saved)
    assert "trainable.image_encoder.trainable.vision_ctx" in saved and len(saved) == 3 + 6 + 3  # prompts, projector, BatchNorm buffers
    assert {"trainable.projector.1.running_mean", "trainable.projector.1.running_var"} <= set(saved)
    assert not torch.equal(saved["trainable.projector.1.running_var"], torch.ones(64))  # statistics were updated


def test_resume_after_a_stop_gives_the_same_student(world: dict[str, Any]) -> None:
    out = world["root"] / "resumed"
    argv = [*world["argv"], "--teacher", str(world["teachers"][0]), "--output", str(out)]
    assert main([*argv, "--stop-after-epochs", "1"]) == 0
    assert not (out / "metrics.json").exists()
    assert main([*argv, "--resume"]) == 0
    ours, ref = load_file(str(out / "prompts.safetensors")), load_file(str(world["student"] / "prompts.safetensors"))
    assert set(ours) == set(ref)
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name


def test_resume_with_another_teacher_is_refused(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = world["root"] / "switched"
    argv = [*world["argv"], "--output", str(out)]
    assert main([*argv, "--teacher", str(world["teachers"][0]), "--stop-after-epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--teacher", str(world["teachers"][1]), "--resume"]) == 4
    err = capsys.readouterr().err
    assert "teacher.sha256" in err and "Traceback" not in err


def test_eval_and_predict_use_the_recorded_teacher(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from mmprompt import Predictor

    student, data = world["student"], world["data"]
    novel = json.loads((student / "metrics.json").read_text())["eval"]["novel"]["accuracy"]
    assert main(["eval", "--checkpoint", str(student), "--dataset", "mmprompt_demo", "--data-root", str(data),
                 "--subsample", "new", "--no-progress", "--num-workers", "0"]) == 0
    assert f"top-1 {novel:.2f}%" in capsys.readouterr().out
    # another teacher file than the one the student was trained with: refused, naming both
    assert main(["eval", "--checkpoint", str(student), "--dataset", "mmprompt_demo", "--data-root", str(data),
                 "--teacher", str(world["teachers"][1]), "--no-progress"]) == 4
    err = capsys.readouterr().err
    assert str(world["teachers"][1]) in err and str(world["teachers"][0]) in err
    image = next((data / "mmprompt_demo" / "images" / "red_circle").glob("test_*.png"))
    predictor = Predictor.from_checkpoint(student)
    top = predictor.predict([str(image)], top_k=3)[0]
    assert len(top) == 3 and all(name in predictor.classes for name, _ in top)


def test_no_teacher_is_one_line_exit_2(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*world["argv"], "--output", str(world["root"] / "no_teacher")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pass --teacher RUN_DIR_OR_CKPT" in err.splitlines()[0] and "Traceback" not in err
    assert not (world["root"] / "no_teacher").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------ no labels
class PoisonedLabel(Exception):
    pass


class PoisonedSample:
    """A training image whose label and class name must never be read."""

    def __init__(self, path: str) -> None:
        self.path = path

    def resolve(self, image_dir: str | Path) -> Path:
        return Path(image_dir) / self.path

    @property
    def label(self) -> int:
        raise PoisonedLabel(f"the label of {self.path} was read")

    @property
    def classname(self) -> str:
        raise PoisonedLabel(f"the class name of {self.path} was read")


def _poisoned_run(world: dict[str, Any], method: str, options: dict[str, Any], out: Path) -> Any:
    from mmprompt.data import build_dataset
    from mmprompt.engine.clip_source import resolve_clip
    from mmprompt.engine.run import run_experiment

    splits = build_dataset("mmprompt_demo", world["data"], shots=0, seed=1, subsample="all")
    poisoned = dataclasses.replace(splits, train=[PoisonedSample(s.path) for s in splits.train])
    cfg = RunConfig.from_dict({
        "method": {"name": method, **options}, "data": {"dataset": "mmprompt_demo", "root": str(world["data"]),
                                                        "shots": 0, "subsample": "all", "num_workers": 0},
        "optim": {"epochs": 1, "batch_size": 32}, "clip": {"weights": "demo"}, "log": {"progress": False},
        "teacher": {"path": str(world["teachers"][0])}})
    clip, info = resolve_clip("demo")
    return run_experiment(cfg, clip, info, out, train_splits=poisoned, evals={"test": splits}, progress=False)


def test_transductive_training_reads_no_label(world: dict[str, Any]) -> None:
    metrics = _poisoned_run(world, "promptkd", {"depth_vision": 3}, world["root"] / "poisoned_kd")
    assert metrics["status"] == "done" and metrics["transductive"] is True
    assert metrics["train_images"] == 150
    # the poison works: an inductive method on the same samples reads the labels and fails
    with pytest.raises(PoisonedLabel):
        _poisoned_run(world, "coop", {"n_ctx": 2}, world["root"] / "poisoned_coop")


def test_objective_refuses_to_read_labels() -> None:
    from mmprompt.methods import NoLabels
    from mmprompt.methods.contract import LabelsUnavailableError

    labels = NoLabels(4)
    for use in (lambda: labels.numel(), lambda: labels[0], lambda: len(labels),
                lambda: torch.nn.functional.cross_entropy(torch.zeros(4, 3), labels)):
        with pytest.raises(LabelsUnavailableError):
            use()


# ------------------------------------------------------------------------------------------------ bad input
def _teacher(clip: CLIP, method: str, names: list[str], **options: Any) -> Teacher:
    return Teacher(create_learner(method, clip, names, options), {"source": f"/teachers/{method}"})


def test_teacher_with_other_class_specific_classes_is_refused() -> None:
    clip = load_demo_clip()
    teacher = _teacher(clip, "coop", ["cat", "dog"], class_specific=True, n_ctx=2)
    with pytest.raises(TeacherMismatchError) as info:
        create_learner("promptkd", clip, ["red circle", "blue square"], {"depth_vision": 3}, teacher=teacher)
    msg = str(info.value)
    assert "'cat', 'dog'" in msg and "'red circle', 'blue square'" in msg and "/teachers/coop" in msg


def test_teacher_with_another_input_size_or_context_is_refused() -> None:
    clip = load_demo_clip()
    config = dataclasses.replace(clip.config, vision=dataclasses.replace(clip.config.vision, image_size=64))
    torch.manual_seed(0)
    other = _teacher(CLIP(config).eval(), "promptsrc", ["a"], depth_text=3, depth_vision=3)
    with pytest.raises(TeacherMismatchError, match="reads 64px images but the promptkd student's CLIP reads 32px"):
        create_learner("promptkd", clip, ["a"], {"depth_vision": 3}, teacher=other)
    short = _teacher(clip, "promptsrc", ["a"], n_ctx_text=2, depth_text=3, depth_vision=3)
    with pytest.raises(TeacherMismatchError, match="2 text context tokens.*n_ctx_text .N_CTX_TEXT. is 4"):
        create_learner("promptkd", clip, ["a"], {"depth_vision": 3}, teacher=short)


def test_student_checkpoint_with_a_teacher_of_another_width_is_refused(world: dict[str, Any]) -> None:
    clip = load_demo_clip()
    wide = dataclasses.replace(clip.config, embed_dim=96)
    torch.manual_seed(0)
    teacher = _teacher(CLIP(wide).eval(), "promptsrc", ["a"], depth_text=3, depth_vision=3)
    with pytest.raises(CheckpointError, match="do not fit the promptsrc teacher /teachers/promptsrc .embedding width 96"):
        load_prompts(world["student"], clip, teacher=teacher)


def test_student_is_an_ivlp_learner_plus_its_projector() -> None:
    """Composition: the prompted image tower is the method table's ``ivlp`` (vision prompts only) at
    ``trainable.image_encoder``; the projector is PromptKD's own; one parameter group (the official optimizer)."""
    from mmprompt.methods.ivlp import IVLP

    clip = load_demo_clip()
    names = ["red circle", "blue square"]
    teacher = _teacher(clip, "promptsrc", names, depth_text=3, depth_vision=3)
    student = create_learner("promptkd", clip, names, {"depth_vision": 3}, teacher=teacher)
    inner = student.inner
    assert type(inner) is IVLP and inner.config.n_ctx_text == 0 and inner.config.depth_vision == 3
    assert student.transductive and student.teacher is teacher
    params = dict(student.named_parameters())
    assert not any(p.requires_grad for n, p in params.items() if not n.startswith("trainable."))  # CLIP frozen
    assert not any(".clip." in n for n in params)  # one CLIP, registered once (the inner learner's is shared)
    assert list(student.named_trainable()) == [
        "trainable.image_encoder.trainable.vision_ctx", "trainable.image_encoder.trainable.vision_deep.0",
        "trainable.image_encoder.trainable.vision_deep.1", "trainable.projector.0.weight",
        "trainable.projector.0.bias", "trainable.projector.1.weight", "trainable.projector.1.bias",
        "trainable.projector.3.weight", "trainable.projector.3.bias"]
    (group,) = student.parameter_groups()
    assert group[0] == student.trainable_parameters() and group[1] == 1.0
    images = torch.randn(2, 3, 32, 32)
    student.eval()
    with torch.no_grad():  # f is the inner learner's own prompted image feature
        assert torch.equal(student.encoder_features(images), inner.image_features(images))
    none = create_learner("promptkd", clip, names, {"depth_vision": 0}, teacher=teacher)
    assert none.inner.config.n_ctx_vision == 0 and all(k.startswith("trainable.projector.")
                                                        for k in none.named_trainable())


def test_checkpoint_written_before_the_composition_loads_and_gives_its_logits() -> None:
    """``tests/data/promptkd_v1``: a student checkpoint (``trainable.vision_ctx``, ``trainable.vision_deep.*``)
    written by the PromptKD code before the composition (mmprompt at ba3d69e: demo CLIP, a seeded PromptSRC
    teacher on three classes, depth 3, every trainable tensor moved by N(0, 0.05^2), one training forward),
    with that code's eval logits and training loss on the stored images. The current code loads it (names
    mapped to ``trainable.image_encoder.trainable.*``) and gives the same numbers; importing it as a prompt
    state gives the same config."""
    from safetensors.torch import load_file as read

    from mmprompt.methods.promptkd import PromptKD

    root = DATA / "promptkd_v1"
    old = read(str(root / "student" / "prompts.safetensors"))
    assert "trainable.vision_ctx" in old and not any("image_encoder" in k for k in old)
    expected = read(str(root / "expected.safetensors"))
    clip = load_demo_clip()
    names = ["red circle", "blue square", "green triangle"]
    tlearner = create_learner("promptsrc", clip, names, {"depth_text": 3, "depth_vision": 3})
    tlearner.load_prompt_state_dict(read(str(root / "teacher.safetensors")))
    teacher = Teacher(tlearner, {"source": "/teachers/promptsrc"})
    student = load_prompts(root / "student", clip, teacher=teacher).eval()
    assert student.config.depth_vision == 3
    assert torch.equal(student.inner.trainable.vision_ctx.detach(), old["trainable.vision_ctx"])
    with torch.no_grad():
        logits = student(expected["images"])
    assert (logits - expected["eval_logits"]).abs().max() / expected["eval_logits"].abs().max() < 1e-5
    student.train()
    loss = student.objective(expected["images"], None).total.detach()
    assert abs(float(loss) - float(expected["train_loss"])) / abs(float(expected["train_loss"])) < 1e-5
    assert PromptKD.options_from_state(old) == {"n_ctx_vision": 4, "depth_vision": 3}
    legacy = {k.replace("trainable.", "prompt.", 1): v for k, v in old.items()}  # the older container name too
    student.load_prompt_state_dict(legacy)
    assert torch.equal(student.inner.trainable.vision_deep[1].detach(), old["trainable.vision_deep.1"])


def test_parity_reports_each_promptkd_tensor(tmp_path: Path) -> None:
    """The reference check covers the evaluation halves, the teacher (built from teacher_weights/ and
    teacher_param/) and the zero gradient: a changed reference value fails exactly there."""
    ref = load_reference(REFERENCE)
    arrays = dict(ref.arrays)
    arrays["promptkd/eval/test_logits"] = arrays["promptkd/eval/test_logits"] * 1.01
    arrays["promptkd/grad/VPT_image_trans.conv1.0.bias"] = arrays["promptkd/grad/VPT_image_trans.conv1.0.bias"] + 1.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    bad.with_suffix(".json").write_text(json.dumps(ref.meta))
    (result,) = run_parity(bad, ["promptkd"])
    assert sorted(c.name for c in result.checks if not c.ok) == ["eval/test_logits",
                                                                  "grad/VPT_image_trans.conv1.0.bias"]
    arrays = dict(ref.arrays)
    name = "teacher_param/image_encoder.VPT"
    arrays[name] = -3 * arrays[name]  # (a constant shift would be removed by ln_pre)
    np.savez(bad, **arrays)
    (result,) = run_parity(bad, ["promptkd"])
    failed = {c.name for c in result.checks if not c.ok}
    assert "teacher/image_features" in failed and "teacher/text_features" not in failed


def test_import_official_student_reproduces_the_official_evaluation(tmp_path: Path) -> None:
    """An official PromptKD student checkpoint (Dassl layout, VLPromptLearner/model-best.pth.tar, with the frozen
    CLIP's keys and the projector's BatchNorm buffers) imported and run with the reference teacher gives the
    official evaluation logits."""
    from mmprompt.official import import_official
    from mmprompt.parity import reference_clip, reference_teacher

    ref = load_reference(REFERENCE)
    a = ref.arrays
    for case in ("promptkd", "promptkd_cross"):
        state = {k.split("/", 2)[2]: torch.from_numpy(v) for k, v in a.items()
                 if k.startswith((f"{case}/param/", f"{case}/buffer/"))}
        state["VPT_image_trans.conv1.1.num_batches_tracked"] = torch.tensor(3)
        state["image_encoder.conv1.weight"] = torch.from_numpy(a["weights/visual.conv1.weight"])  # frozen: dropped
        folder = tmp_path / case / "VLPromptLearner"
        folder.mkdir(parents=True)
        torch.save({"state_dict": state, "epoch": 20}, folder / "model-best.pth.tar")
        student_clip = reference_clip(ref)
        teacher_clip = reference_clip(ref, "teacher_weights/")
        official = ref.meta["cases"][case]["official_config"]["TRAINER.PROMPTKD"]
        out = import_official(tmp_path / case, "promptkd", tmp_path / f"{case}_ours", student_clip.config,
                              classnames=ref.meta["classnames"], teacher_arch=teacher_clip.config,
                              config={"depth_text": official["PROMPT_DEPTH_TEXT"]})
        from mmprompt.methods import config_from_official

        teacher = reference_teacher(ref, "promptkd", config_from_official("promptkd", {"TRAINER.PROMPTKD": official}))
        learner = load_prompts(out, student_clip, teacher=teacher).eval()
        assert learner.config.depth_vision == official["PROMPT_DEPTH_VISION"]
        with torch.no_grad():
            logits = learner(torch.from_numpy(a["images"]))
        expected = torch.from_numpy(a[f"{case}/logits"])
        assert (logits - expected).abs().max() / expected.abs().max() < 1e-4


@pytest.mark.slow
def test_demo_trains_a_promptsrc_teacher_then_promptkd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mmprompt demo --methods promptkd``: the demo trains PromptSRC first and distils from that run; the
    table labels the row transductive."""
    assert main(["demo", "--quick", "--methods", "zeroshot", "promptkd", "--output", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "promptkd (transductive)" in out and "transductive: trained on unlabelled images" in out
    teacher = next((tmp_path / "teacher" / "promptsrc" / "mmprompt_demo").glob("*/seed1"))
    student = next((tmp_path / "runs" / "promptkd" / "mmprompt_demo").glob("*/seed1"))
    meta = json.loads((student / "prompts.json").read_text())
    assert meta["extra"]["teacher"]["source"] == str(teacher.absolute())
    rows = (tmp_path / "runs" / "results.csv").read_text().splitlines()
    assert rows[0].endswith(",training") and any(r.startswith("promptkd,") and r.endswith(",transductive") for r in rows)
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results["methods"]["promptkd"]["training"] == "transductive"
    assert results["methods"]["zeroshot"]["training"] == "inductive"


def test_official_teacher_checkpoint_gives_the_official_teacher(tmp_path: Path) -> None:
    """``--teacher`` on an official (Dassl) PromptSRC teacher checkpoint: the official teacher design on
    ``--teacher-clip``, prompts read from the checkpoint (its frozen CLIP keys and PromptSRC's extra keys are
    ignored), gives the official teacher text and image features; a checkpoint missing a prompt is refused."""
    from mmprompt.engine.teacher import load_teacher
    from mmprompt.methods import config_from_official
    from mmprompt.parity import reference_clip

    ref = load_reference(REFERENCE)
    a = ref.arrays
    teacher_clip = reference_clip(ref, "teacher_weights/")
    v, t = teacher_clip.config.vision, teacher_clip.config.text
    clip_file = tmp_path / "clip" / "teacher.pt"
    clip_file.parent.mkdir()
    torch.save(teacher_clip.state_dict(), clip_file)
    (clip_file.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": teacher_clip.config.embed_dim, "quick_gelu": True,
        "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                       "head_width": v.width // v.heads, "patch_size": v.patch_size},
        "text_cfg": {"context_length": t.context_length, "width": t.width, "heads": t.heads, "layers": t.layers}}}))
    state = {k.split("/", 1)[1]: torch.from_numpy(v.astype(np.float32)) for k, v in a.items()
             if k.startswith("teacher_param/")}
    state["prompt_learner.ZS_image_encoder.conv1.weight"] = torch.zeros(3)  # PromptSRC's extra key: ignored
    state["prompt_learner.token_prefix"] = torch.zeros(5, 1, 96)
    folder = tmp_path / "teacher_model" / "EuroSAT" / "VLPromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 20}, folder / "model-best.pth.tar")
    official = ref.meta["cases"]["promptkd"]["official_config"]
    config = config_from_official("promptkd", official)
    student = reference_clip(ref)
    names = ref.meta["classnames"]
    teacher = load_teacher(tmp_path / "teacher_model" / "{dataset}", "promptkd", config, student, names,
                           teacher_clip=str(clip_file), activation="quick_gelu", dataset="EuroSAT")
    assert teacher.info["kind"] == "official" and teacher.info["sha256"] == sha256_file(folder / "model-best.pth.tar")
    text = teacher.text_features(names)
    expected = a["promptkd/teacher/text_features"]
    assert np.abs(text.numpy() - expected).max() / np.abs(expected).max() < 1e-4
    image = teacher.image_features(torch.from_numpy(a["images"]))
    expected = a["promptkd/teacher/image_features"]
    assert np.abs(image.numpy() - expected).max() / np.abs(expected).max() < 1e-4
    del state["text_encoder.transformer.resblocks.8.VPT_shallow"]
    torch.save({"state_dict": state, "epoch": 20}, folder / "model-best.pth.tar")
    with pytest.raises(CheckpointError, match="missing: .'trainable.text_deep.7'."):
        load_teacher(folder.parent, "promptkd", config, student, names, teacher_clip=str(clip_file),
                     activation="quick_gelu")


@pytest.mark.slow
def test_kill9_during_training_then_resume_gives_the_same_student(world: dict[str, Any]) -> None:
    """A PromptKD run killed (SIGKILL) inside its second training-state write resumes to the same student."""
    import os
    import signal
    import subprocess
    import sys

    from test_faults_runs import KILLER

    out = world["root"] / "killed"
    script = world["root"] / "killer.py"
    script.write_text(KILLER)
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "KILL_AT": "state.pt", "KILL_NTH": "2",
           "PYTHONPATH": os.pathsep.join([src, str(Path(__file__).parent)])}
    argv = [*world["argv"][1:], "--teacher", str(world["teachers"][0]), "--output", str(out)]
    proc = subprocess.run([sys.executable, str(script), "train", *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    assert main(["train", *argv, "--resume"]) == 0
    ours, ref = load_file(str(out / "prompts.safetensors")), load_file(str(world["student"] / "prompts.safetensors"))
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_tables_csv_and_report_label_transductive_runs(tmp_path: Path) -> None:
    """results.md / .csv / .json and the reproduce report mark PromptKD transductive, other methods not."""
    from mmprompt.protocols.published import comparison_rows, format_report
    from mmprompt.protocols.results import B2N_METRICS, aggregate, format_table, write_results

    runs = {m: {"eurosat": {1: {"base": 90.0, "novel": 70.0}}} for m in ("promptkd", "coop")}
    results = aggregate("base2novel", runs, B2N_METRICS)
    assert results["methods"]["promptkd"]["training"] == "transductive"
    assert results["methods"]["coop"]["training"] == "inductive"
    table = format_table(results)
    assert "| promptkd (transductive) |" in table and "| coop |" in table and "not comparable" in table
    paths = write_results(results, tmp_path)
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].endswith(",training")
    assert {r.split(",")[0]: r.split(",")[-1] for r in rows[1:]} == {"promptkd": "transductive", "coop": "inductive"}
    report = format_report([{"protocol": "base2novel", "results": results,
                             "rows": comparison_rows("base2novel", ["promptkd", "coop"], results, ["eurosat"])}])
    assert "| promptkd (transductive) | EuroSAT |" in report and "| coop | EuroSAT |" in report
    assert "| promptkd (transductive) | Average | 90.00 | 86.96 | +3.04 |" in report  # beside the published number


# ------------------------------------------------------------------------------------ cross-dataset protocol
def test_cross_dataset_trains_each_target_transductively_with_the_source_teacher(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The transfer protocol of a transductive method is PromptKD's official cross-dataset: per target, the
    student trains on the target's unlabelled training split with the SOURCE's teacher (``{dataset}`` in the
    teacher path is the source key, not the target's) and is evaluated on all the target's classes; no source
    run; the rows are transductive and ``reproduce`` compares them with the published 71.33 average."""
    import shutil

    from mmprompt.protocols import run_transfer
    from mmprompt.protocols.published import comparison_rows, format_report
    from mmprompt.protocols.transfer import CROSS_DATASET_TARGETS

    root = world["root"]
    by_source = root / "teachers_by_source"
    shutil.copytree(world["teachers"][0], by_source / "imagenet")  # "the ImageNet teacher" of this world
    out = root / "xd"
    overrides = ["optim.epochs=1", "method.depth_vision=3", "data.num_workers=0", "data.crop_scale_min=0.5",
                 f"promptkd:teacher.path={by_source / '{dataset}'}"]
    results = run_transfer("cross-dataset", ["promptkd"], ["mmprompt_demo"], [1], world["data"], "demo", out,
                           overrides=overrides, progress=False, device="cpu", source="imagenet")
    entry = results["methods"]["promptkd"]
    assert entry["training"] == "transductive"
    assert set(entry["datasets"]) == {"mmprompt_demo"}  # no source run: the teacher is the source's
    run = out / "promptkd" / "mmprompt_demo" / "transductive-from-imagenet" / "seed1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["transductive"] is True and metrics["transfer_source"] == "imagenet"
    assert metrics["train_images"] == 25 * 6  # the target's full training split, all classes, unlabelled
    assert metrics["eval"]["test"]["total"] == 25 * 4 and metrics["eval"]["test"]["num_classes"] == 25
    assert entry["average"]["accuracy"] == pytest.approx(metrics["eval"]["test"]["accuracy"])
    teacher = json.loads((run / "prompts.json").read_text())["extra"]["teacher"]
    assert teacher["source"] == str(by_source / "imagenet")
    assert teacher["sha256"] == sha256_file(world["teachers"][0] / "prompts.safetensors")
    table = (out / "results.md").read_text()
    assert "| promptkd (transductive) |" in table and "trained on each target's unlabelled training images" in table
    rows = comparison_rows("cross-dataset", ["promptkd"], results, CROSS_DATASET_TARGETS)
    average = next(r for r in rows if r["dataset"] == "Average")
    assert average["published_accuracy"] == 71.33 and average["training"] == "transductive"
    assert average["diff_accuracy"] is None  # one target of the paper's ten: not compared
    assert {r["dataset"]: r["published_accuracy"] for r in rows}["caltech101"] == 93.61
    report = format_report([{"protocol": "cross-dataset", "rows": rows, "results": results}])
    assert "| promptkd (transductive) | Average (ours over 1 dataset) |" in report and "71.33" in report
    assert "official cross-dataset protocol" in report
    # a finished sweep is not trained again
    stamp = (run / "metrics.json").stat().st_mtime_ns
    again = run_transfer("cross-dataset", ["promptkd"], ["mmprompt_demo"], [1], world["data"], "demo", out,
                         overrides=overrides, progress=False, device="cpu", source="imagenet")
    assert (run / "metrics.json").stat().st_mtime_ns == stamp and again["methods"] == results["methods"]


def test_domain_generalization_of_a_transductive_method_is_refused(world: dict[str, Any]) -> None:
    """The DG targets have test images only: nothing to train a transductive student on."""
    from mmprompt.config import ConfigError
    from mmprompt.protocols import run_transfer

    with pytest.raises(ConfigError, match="imagenet_a has test images only"):
        run_transfer("domain-generalization", ["promptkd"], ["imagenet_a"], [1], world["data"], "demo",
                     world["root"] / "dg", overrides=[f"promptkd:teacher.path={world['teachers'][0]}"],
                     progress=False, device="cpu")
    assert not (world["root"] / "dg").exists()


def test_reproduce_plans_promptkd_cross_dataset_per_target(tmp_path: Path) -> None:
    """``reproduce --methods promptkd``: base-to-novel and the transductive cross-dataset (one run per target and
    seed, the ImageNet teacher for each), compared with the published entry; no domain generalisation."""
    from mmprompt.protocols.reproduce import format_dry_run, plan_reproduce
    from mmprompt.protocols.transfer import CROSS_DATASET_TARGETS

    plan = plan_reproduce(["promptkd"], tmp_path / "data", "demo", tmp_path / "out", seeds=(1, 2),
                          overrides=["promptkd:teacher.path=/teachers/{dataset}"])
    assert "cross-dataset" in plan.protocols and "domain-generalization" not in plan.protocols
    xd = plan.protocols["cross-dataset"]
    assert xd["methods"] == ["promptkd"]
    specs = xd["specs"]
    assert sorted((s.dataset, s.seed) for s in specs) == sorted((t, s) for t in CROSS_DATASET_TARGETS for s in (1, 2))
    assert {s.config["teacher"]["path"] for s in specs} == {"/teachers/imagenet"}
    assert all(s.config["data"]["dataset"] == s.dataset and not s.targets for s in specs)
    assert all("/transductive-from-imagenet/" in s.folder for s in specs)
    dry = format_dry_run(plan)
    assert "transfer       promptkd       caltech101" in dry
