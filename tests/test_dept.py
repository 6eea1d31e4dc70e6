"""DePT beyond its reference file (whose parity with the official code is in test_parity.py): the head only
on its own classes, new class names give the base learner's logits exactly, DePT wraps other learners, the
objective's formula, checkpoints, import-official, the staged learning rate, demo training and the bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmprompt.checkpoint import load_prompts, read_prompt_meta, save_prompts
from mmprompt.cli import main
from mmprompt.clip.model import CLIP
from mmprompt.config import load_config
from mmprompt.methods import config_from_official, create_learner, get_method, list_methods, make_config
from mmprompt.parity import load_reference, reference_clip
from test_engine_support import official_custom_clip_state

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "dept_reference.npz"
NAMES = ["sea_or_lake", "Forest", "dog"]
NOVEL = ["cat", "river bank", "bird", "car"]


def base_options(base: str) -> dict[str, object]:
    """The base's own base-to-novel preset with its demo overrides (depths for the 4-layer tiny/demo CLIP)."""
    spec = get_method(base)
    return dict(load_config(spec.preset_for("base2novel"), list(spec.demo_overrides)).method.options)


WRAPPED = ["ivlp", "kgcoop", pytest.param("promptsrc", marks=pytest.mark.skipif(
    "promptsrc" not in list_methods(), reason="promptsrc is not in the method table on this branch"))]


def dept(clip: CLIP, base: str, names: list[str] = NAMES, **options: object):  # noqa: ANN201
    torch.manual_seed(1)
    learner = create_learner("dept", clip, names, {"base": base, "base_options": base_options(base), **options})
    with torch.no_grad():  # a head that is not at its init, so that fused and similarity logits differ
        for name, p in learner.named_parameters():
            if p.requires_grad and not name.startswith("trainable.base."):
                p.add_(torch.randn_like(p) * 0.1)
    return learner


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# ----- the head and the class list --------------------------------------------------------------------
def test_trainable_tensors_sit_under_prompt(clip: CLIP) -> None:
    learner = dept(clip, "maple")
    names = [n for n, p in learner.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("trainable.") for n in names)
    assert {"trainable.base.trainable.ctx", "trainable.film_img.scale", "trainable.film_text.bias", "trainable.head.weight"} <= set(names)
    assert learner.trainable.head.weight.shape == (len(NAMES), clip.config.embed_dim)
    assert not any(n.startswith("trainable.base.clip") for n, _ in learner.named_parameters())
    n_base = len(learner.base.trainable_parameters())  # the base's come first (transform_gradients slices them)
    assert all(n.startswith("trainable.base.") for n in names[:n_base])
    assert not any(n.startswith("trainable.base.") for n in names[n_base:])
    no_film = create_learner("dept", clip, NAMES, {"base": "coop", "film": False, "head": "similarity"})
    assert [n for n, p in no_film.named_parameters() if p.requires_grad] == ["trainable.base.trainable.ctx"]


@pytest.mark.parametrize("base", ["coop", "maple"])
def test_new_class_names_give_exactly_the_base_methods_logits(clip: CLIP, base: str) -> None:
    learner = dept(clip, base).eval()
    plain = create_learner(base, clip, NOVEL, base_options(base)).eval()
    plain.load_prompt_state_dict({k.removeprefix("trainable.base."): v for k, v in learner.prompt_state_dict().items()
                                  if k.startswith("trainable.base.")})
    x = images()
    with torch.no_grad():
        fused = learner(x)
        learner.set_classnames(NOVEL)
        assert not learner.head_active
        novel = learner(x)
        cached = learner.predict_logits(x, learner.class_text_features())
        expected = plain(x)
    assert torch.equal(novel, expected) and torch.equal(cached, expected)
    assert set(learner.eval_tensors(x)) == {"logits_similarity"}
    with torch.no_grad():  # back on the base classes: the fused forward again
        learner.set_classnames(NAMES)
        assert learner.head_active
        torch.testing.assert_close(learner(x), fused)


def test_fusion_and_head_logits_on_base_classes(clip: CLIP) -> None:
    learner = dept(clip, "coop").eval()
    x = images()
    with torch.no_grad():
        t = learner.eval_tensors(x)
        image, text = t["debug/image_features"], t["debug/text_features"]
        film = image * learner.trainable.film_img.scale + learner.trainable.film_img.bias
        torch.testing.assert_close(t["logits_linear"], learner.trainable.head(film))  # raw features, no logit scale
        torch.testing.assert_close(t["logits_similarity"], learner.logits_from(image, text))
        torch.testing.assert_close(learner(x), 0.3 * t["logits_similarity"] + 0.7 * t["logits_linear"])
        learner.config.fusion = False
        torch.testing.assert_close(learner(x), t["logits_linear"])


def test_a_subset_of_the_head_classes_uses_their_rows(clip: CLIP) -> None:
    """ImageNet-A/R of an ImageNet-trained head: the rows of the classes present (official load_model slicing)."""
    learner = dept(clip, "coop").eval()
    x = images()
    with torch.no_grad():
        full = learner.eval_tensors(x)
        learner.set_classnames(["dog", "sea_or_lake"])
        sub = learner.eval_tensors(x)
        assert learner.head_active
    torch.testing.assert_close(sub["logits_linear"], full["logits_linear"][:, [2, 0]])
    with torch.no_grad():
        learner.set_classnames(["dog", "cat"])  # one class unknown to the head: similarity only
    assert not learner.head_active


def test_a_class_name_the_head_holds_twice(clip: CLIP) -> None:
    """The same list uses the rows in order; a subset naming the duplicate cannot be resolved by name."""
    learner = dept(clip, "coop", names=["crane", "dog", "crane"]).eval()
    assert learner.head_active
    x = images()
    with torch.no_grad():
        full = learner.eval_tensors(x)["logits_linear"]
        torch.testing.assert_close(full, learner.trainable.head(learner.trainable.film_img(learner.image_features(x))))
        learner.set_classnames(["dog"])
        assert learner.head_active
        torch.testing.assert_close(learner.eval_tensors(x)["logits_linear"], full[:, [1]])
        learner.set_classnames(["crane"])
    assert not learner.head_active


def test_training_on_other_classes_than_the_heads_is_refused(clip: CLIP) -> None:
    learner = dept(clip, "coop")
    learner.set_classnames(NOVEL)
    with pytest.raises(RuntimeError, match="classes its head was built for"):
        learner(images(), torch.tensor([0, 1]))


# ----- the objective ------------------------------------------------------------------------------------------
def test_objective_is_the_official_formula(clip: CLIP) -> None:
    learner = dept(clip, "coop").train()
    x, y = images(3), torch.tensor([0, 2, 2])
    objective = learner(x, y)
    assert set(objective.terms) == {"ce_similarity", "ce_linear"}
    with torch.no_grad():
        text, image = learner.text_features(), learner.image_features(x)
        sim = learner.logits_from(image, text)
        rows = torch.cat([learner.trainable.film_text(text)[y], learner.trainable.film_img(image)])  # text rows first
        ce_lin = F.cross_entropy(learner.trainable.head(rows), torch.cat([y, y]))
    torch.testing.assert_close(objective.terms["ce_similarity"], F.cross_entropy(sim, y))
    torch.testing.assert_close(objective.terms["ce_linear"], ce_lin)
    torch.testing.assert_close(objective.total, 0.3 * F.cross_entropy(sim, y) + 0.7 * ce_lin)


def test_similarity_head(clip: CLIP) -> None:
    learner = dept(clip, "coop", head="similarity").train()
    x, y = images(), torch.tensor([1, 0])
    objective = learner(x, y)
    with torch.no_grad():
        text, image = learner.text_features(), learner.image_features(x)
        head = learner.logits_from(learner.trainable.film_img(image), learner.trainable.film_text(text))
    torch.testing.assert_close(objective.terms["ce_linear"], F.cross_entropy(head, y))
    learner.eval()
    with torch.no_grad():
        torch.testing.assert_close(learner.eval_tensors(x)["logits_linear"], head)


@pytest.mark.parametrize("base", WRAPPED)
def test_dept_wraps_other_learners(clip: CLIP, base: str) -> None:
    """The base's own terms keep their weights; its ce is split with the head's; the head trains; the base's
    logits on new classes are unchanged."""
    learner = dept(clip, base).train()
    plain = create_learner(base, clip, NAMES, base_options(base)).train()
    plain.load_prompt_state_dict({k.removeprefix("trainable.base."): v for k, v in learner.prompt_state_dict().items()
                                  if k.startswith("trainable.base.")})
    x, y = images(), torch.tensor([0, 2])
    torch.manual_seed(5)
    objective = learner(x, y)
    torch.manual_seed(5)
    inner = plain(x, y)
    assert {"ce_similarity", "ce_linear"} | (set(inner.terms) - {"ce"}) == set(objective.terms)
    torch.testing.assert_close(objective.terms["ce_similarity"], inner.terms["ce"])
    expected = inner.total - 0.7 * inner.terms["ce"] + 0.7 * objective.terms["ce_linear"]
    torch.testing.assert_close(objective.total, expected)
    objective.total.backward()
    grads = {n: p.grad for n, p in learner.named_parameters() if p.requires_grad}
    assert grads["trainable.head.weight"] is not None and grads["trainable.film_img.scale"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("trainable.base."))
    learner.eval()
    plain.eval()
    learner.set_classnames(NOVEL)
    plain.set_classnames(NOVEL)
    with torch.no_grad():
        torch.testing.assert_close(learner(x), plain(x), rtol=0, atol=0)


def test_image_conditioned_bases_are_refused() -> None:
    with pytest.raises(ValueError, match="depend on the\\s+image"):
        make_config("dept", {"base": "cocoop"})
    with pytest.raises(ValueError, match="base_options"):
        make_config("dept", {"base": "coop", "base_options": {"no_such_option": 1}})
    with pytest.raises(KeyError, match="unknown method"):
        make_config("dept", {"base": "no_such_method"})
    with pytest.raises(ValueError, match="dept.weight"):
        make_config("dept", {"weight": 1.5})


# ----- learning rates, config, checkpoints ---------------------------------------------------------------------
def test_staged_learning_rate(clip: CLIP) -> None:
    from mmprompt.engine.optim import build_optimizer

    learner = dept(clip, "maple")
    optimizer = build_optimizer(learner.parameter_groups(), 0.0035)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in learner.named_parameters():
        if p.requires_grad:
            want = 0.0035 if name.startswith("trainable.base.") else 0.0035 * 6.5
            assert lr[id(p)] == pytest.approx(want), name


def test_official_config_reads_the_cases_base() -> None:
    meta = json.loads(REFERENCE.with_suffix(".json").read_text())
    for case, base in (("dept_coop", "coop"), ("dept_maple", "maple")):
        spec = meta["cases"][case]
        config = config_from_official(spec["method"], spec["official_config"], spec)
        assert config.base == base and config.weight == 0.7 and config.lr_multiplier == 6.5
    maple = config_from_official("dept_maple", meta["cases"]["dept_maple"]["official_config"], {})
    assert maple.base_options["depth"] == 9 and maple.base_options["ctx_init"] == "a photo of a"
    bad = dict(meta["cases"]["dept_coop"]["official_config"], **{"DATASET.SUBSAMPLE_CLASSES": "new"})
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        config_from_official("dept_coop", bad, {"base_method": "coop"})


def test_checkpoint_round_trip_and_novel_classes(clip: CLIP, tmp_path: Path) -> None:
    learner = dept(clip, "maple").eval()
    x = images()
    with torch.no_grad():
        fused = learner(x)
    save_prompts(learner, tmp_path)
    assert read_prompt_meta(tmp_path)["config"]["base"] == "maple"
    loaded = load_prompts(tmp_path, clip).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), fused)
        novel = load_prompts(tmp_path, clip, classnames=NOVEL).eval()
        learner.set_classnames(NOVEL)
        assert torch.equal(novel(x), learner(x))
    assert not novel.head_active


def _official_checkpoint(ref, case: str, path: Path) -> None:  # noqa: ANN001
    """DePT's official layout: the whole CustomCLIP state dict (frozen CLIP and buffers included)."""
    state = official_custom_clip_state(ref, case)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 10, "optimizer": {}, "scheduler": {}}, path)


@pytest.mark.parametrize("case,folder", [("dept_coop", "PromptLearner"), ("dept_maple", "MultiModalPromptLearner")])
def test_import_official_gives_reference_logits(case: str, folder: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ref = load_reference(REFERENCE)
    _official_checkpoint(ref, case, tmp_path / "official" / folder / "model.pth.tar-10")
    argv = ["import-official", str(tmp_path / "official"), "--method", "dept", "-o", str(tmp_path / "imported"),
            "--arch", "tiny-parity"]
    assert main(argv) == 2  # a user error: a message, no traceback
    assert "tied to their 5 training class names" in capsys.readouterr().err
    names = ",".join(ref.meta["classnames"])
    assert main([*argv, "--classnames", names]) == 0  # the official defaults need no --set
    meta = read_prompt_meta(tmp_path / "imported")
    assert meta["config"]["base"] == case.removeprefix("dept_")
    learner = load_prompts(tmp_path / "imported", reference_clip(ref)).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays[f"{case}/logits"]), rtol=1e-4, atol=1e-4)


# ----- the demo world and the bench --------------------------------------------------------------------
def test_trains_on_the_demo_world(tmp_path: Path) -> None:
    from mmprompt.demo.world import generate_demo_dataset

    generate_demo_dataset(tmp_path / "data", per_class_train=2, per_class_val=0, per_class_test=1)
    run = tmp_path / "run"
    argv = ["train", "--method", "dept", "--dataset", "mmprompt_demo", "--data-root", str(tmp_path / "data"),
            "--clip", "demo", "--output", str(run), "--shots", "2", "--num-workers", "0", "--no-progress",
            "--set", "optim.epochs=1", "method.base_options.depth=3", "optim.batch_size=8"]
    assert main(argv) == 0
    meta = read_prompt_meta(run)
    assert meta["method"] == "dept" and meta["config"]["base"] == "maple"
    assert (run / "metrics.json").is_file()


def test_bench_runs_for_dept(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--method", "dept", "--random-weights", "--arch", "tiny", "--classes", "4", "--steps", "1",
                 "--warmup", "0", "--eval-images", "4", "--eval-batch", "4", "--no-isolate", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["settings"]["method"] == "dept"
    [entry] = doc["results"]
    for path in ("default", "reference"):
        assert not entry[path]["error"] and entry[path]["train_step_s"] > 0
    assert entry["default"]["prompt_tokens"]  # the base learner's prompts are counted
    assert entry["comparison"]["first_loss_abs_diff"] < 1e-4  # the fast text paths give the same loss


def test_a_base_that_encodes_images_twice_gets_a_clear_error(clip: CLIP) -> None:
    learner = dept(clip, "coop").train()
    base = learner.base

    def twice(images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN202
        base.image_features(images)
        return type(base).objective(base, images, labels)

    object.__setattr__(base, "objective", twice)
    with pytest.raises(RuntimeError, match="image features once per call"):
        learner(images(), torch.tensor([0, 1]))
