"""MMA++ beyond the numbers of its reference file (checked case by case in test_parity.py): the parity check
really feeds the official draws, the training step's own draws, class descriptions (file errors, matching,
unequal counts), and train / resume / eval / predict through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmprompt.checks import ConfigError
from mmprompt.cli import main
from mmprompt.descriptions import load_descriptions, match_descriptions
from mmprompt.methods import DatasetContext, config_from_official, create_learner, mmapp
from mmprompt.parity import load_reference, run_parity
from test_engine_support import make_data_root, one_thread, save_tiny_clip

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
REFERENCE = Path(__file__).parent / "data" / "mmapp_reference.npz"
SMALL = {"adapter_start": 2, "adapter_end": 4, "adapter_dim": 8}
EUROSAT = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road"]
SENTENCES = {name: [f"a satellite photo of {name.lower()}.", f"{name} seen from above."] for name in EUROSAT}


# ----- the parity check --------------------------------------------------------------------------------
def test_parity_command_passes_on_the_mmapp_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "--reference", str(REFERENCE)]) == 0
    assert "2 of 2 cases pass" in capsys.readouterr().out


def test_the_injected_official_draws_are_what_makes_parity_pass(tmp_path: Path) -> None:
    """Another template index, reg scale or dropout mask than the recorded one fails the check: the step
    really uses the injected draws (and the grad_reg group is compared)."""
    ref = load_reference(REFERENCE)
    (good,) = run_parity(REFERENCE, ["mmapp_hc"])
    assert good.ok and any(c.name.startswith("grad_reg/") for c in good.checks)
    changes = {
        "template_index": lambda a: (a + 1) % 80,
        "reg_scale": lambda a: a * 0.5,
        "dropout/main/text/6": lambda a: ~a,
    }
    for name, change in changes.items():
        arrays = dict(ref.arrays)
        arrays[f"mmapp_hc/rand/{name}"] = change(arrays[f"mmapp_hc/rand/{name}"])
        path = tmp_path / f"{name.replace('/', '_')}.npz"
        np.savez(path, **arrays)
        path.with_suffix(".json").write_text(json.dumps(ref.meta))
        (bad,) = run_parity(path, ["mmapp_hc"])
        assert not bad.ok, name
        assert {"logits", "eval/text_features"} <= {c.name for c in bad.checks if c.ok}, name  # eval draws nothing


def test_official_templates_config_and_names() -> None:
    ref = load_reference(REFERENCE)
    assert list(mmapp.HC_TEMPLATES) == ref.meta["hc_templates"]
    case = ref.meta["cases"]["mmapp_cupl"]
    config = config_from_official("mmapp", case["official_config"], case)
    assert (config.input_prompts, config.adapter_drop, config.adapter_start, config.adapter_end) == ("cupl", 0.1, 4, 10)
    with pytest.raises(ValueError, match="input_prompts must be one of"):
        config_from_official("mmapp", {"TRAINER.MMADAPTERPP": {"INPUT_PROMPTS": "ensemble"}}, {})
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("mmapp", {"TRAINER.MMADAPTERPP": {"ADAPTER_SCALE": 0.1}}, {})


# ----- the training step's own draws -------------------------------------------------------------------
def make(clip, names=EUROSAT, dataset=None, **options):  # noqa: ANN001, ANN201
    torch.manual_seed(2)
    return create_learner("mmapp", clip, names, {**SMALL, "input_prompts": "hc", **options}, dataset=dataset)


def test_training_step_draws_and_gradients(clip) -> None:  # noqa: ANN001
    """Random draws differ per step; without dropout and with u = 1 both passes agree (cosines 1); the text
    index-0 adapter is never used (no gradient), the vision one is; biases start at PyTorch's default init."""
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    learner = make(clip, adapter_start=0).train()
    assert any(p.abs().max() > 0 for n, p in learner.named_parameters() if n.endswith("bias"))
    first, second = learner(images, labels), learner(images, labels)
    assert not torch.equal(first.terms["cos_text"], second.terms["cos_text"])
    assert learner.last_text_shared_prefix == 0  # dropout: no prefix shared between the classes' prompts
    first.total.backward()
    grads = {n: p.grad for n, p in learner.named_parameters()}
    unused = [n for n in grads if n.startswith("trainable.text_adapter.0.")]
    assert len(unused) == 4 and all(grads[n] is None for n in unused)
    assert {id(p) for n, p in learner.named_parameters() if n in unused} <= {id(p) for p in learner.trainable_parameters()}
    assert set(unused) <= set(learner.prompt_state_dict())  # saved and given to the optimizer, as officially
    assert all(grads[n] is not None and grads[n].abs().max() > 0 for n in grads
               if n.startswith("trainable.visual_adapter.0.") or n.startswith("trainable.text_adapter.2."))

    still = make(clip, adapter_drop=0.0).train()
    still.inject_draws({"reg_scale": torch.tensor(still.config.adapter_train_scale)})
    objective = still(images, labels)
    assert float(objective.terms["cos_text"].detach()) == pytest.approx(1.0, abs=1e-6)
    assert float(objective.terms["cos_image"].detach()) == pytest.approx(1.0, abs=1e-6)
    reg = -2.5 * (objective.terms["cos_text"] + objective.terms["cos_image"])
    torch.testing.assert_close(objective.total, objective.terms["ce"] + reg)
    with pytest.raises(ValueError, match="cannot inject"):
        still.inject_draws({"noise": torch.zeros(1)})


def test_eval_ensembles_each_class_over_its_own_descriptions(clip) -> None:  # noqa: ANN001
    """Classes may have different numbers of sentences: each class averages (and draws from) its own."""
    names = ["cat", "dog_breed"]
    described = {"Cat": ["a cat.", "a small cat on a sofa.", "a photo of a cat."], "dog breed": ["a dog."]}
    learner = make(clip, names, DatasetContext(descriptions=described), input_prompts="cupl")
    assert learner.prompt_counts.tolist() == [3, 1]
    learner.eval()
    with torch.no_grad():
        got = learner.class_text_features()
        want = []
        for sentences in described.values():
            feats = F.normalize(learner._encode_tokens(learner.tokenize(sentences)).float(), dim=-1)
            want.append(F.normalize(feats.mean(0), dim=-1))
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)
    learner.train()
    draws = torch.stack([learner._draw_prompts({}) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {0, 1, 2} and set(draws[:, 1].tolist()) == {0}


# ----- class descriptions -------------------------------------------------------------------------------
def test_descriptions_file_errors_are_one_clear_line(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{'Forest': ['trees']}")
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON"):
        load_descriptions(bad_json)
    not_object = tmp_path / "list.json"
    not_object.write_text('["trees"]')
    with pytest.raises(ConfigError, match=r"expected a JSON object \{class name: \[sentence, ...\]\}, got list"):
        load_descriptions(not_object)
    not_list = tmp_path / "str.json"
    not_list.write_text('{"Forest": "trees"}')
    with pytest.raises(ConfigError, match="class 'Forest' must map to a list of non-empty sentences"):
        load_descriptions(not_list)
    with pytest.raises(FileNotFoundError, match="descriptions file not found"):
        load_descriptions(tmp_path / "missing.json")
    given = {"forest": ["trees."], "Annual_Crop_Land": [], "Sea or Lake": ["water."]}
    with pytest.raises(ConfigError) as err:
        match_descriptions(EUROSAT, given, "d.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("d.json: every class needs at least one sentence")
    assert "no entry for 2 class(es): 'Herbaceous Vegetation Land', 'Highway or Road'" in message
    assert "an empty list for 'Annual Crop Land'" in message and "--descriptions FILE" in message
    assert match_descriptions(["sea_or_lake", "FOREST"], {"Sea_Or_Lake": ["a."], "forest": ["b."]}) == [["a."], ["b."]]
    with pytest.raises(ConfigError, match="two keys name the class 'forest'"):
        match_descriptions(["forest"], {"Forest": ["a."], "forest": ["b."]})


# ----- the command line on a tiny dataset ---------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("mmapp")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMPROMPT_CACHE", str(base / "cache"))
    root = make_data_root(base / "data")
    weights = save_tiny_clip(base / "tiny.pt")
    described = base / "eurosat_descriptions.json"
    described.write_text(json.dumps(SENTENCES))
    common = ["--dataset", "eurosat", "--data-root", str(root), "--clip", str(weights), "--clip-activation",
              "quick_gelu", "--shots", "2", "--num-workers", "0", "--device", "cpu", "--no-progress",
              "--set", "optim.epochs=2", "log.every=1", *[f"method.{k}={v}" for k, v in SMALL.items()]]
    yield {"base": base, "root": root, "weights": weights, "descriptions": described, "common": common}
    mp.undo()


def test_cupl_without_descriptions_says_what_to_pass(world, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    assert main(["train", "--method", "mmapp", "--output", str(tmp_path / "r"), *world["common"]]) == 2
    err = capsys.readouterr().err
    assert "mmapp with these options needs class descriptions for eurosat: pass --descriptions FILE" in err
    assert "Traceback" not in err and not (tmp_path / "r" / "config.yaml").exists()
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"Annual Crop Land": [], "Sea or Lake": ["water."]}))  # base: crops, forest
    assert main(["train", "--method", "mmapp", "--output", str(tmp_path / "r2"), "--descriptions", str(partial),
                 *world["common"]]) == 2
    err = capsys.readouterr().err
    assert "no entry for 1 class(es): 'Forest'; an empty list for 'Annual Crop Land'" in err
    partial.write_text(json.dumps({k: SENTENCES[k] for k in EUROSAT[:2]}))  # base classes only: novel is evaluated
    assert main(["train", "--method", "mmapp", "--output", str(tmp_path / "r3"), "--descriptions", str(partial),
                 *world["common"]]) == 2
    assert "no entry for 2 class(es): 'Herbaceous Vegetation Land', 'Highway or Road'" in capsys.readouterr().err
    assert not (tmp_path / "r3" / "config.yaml").exists()  # checked before anything is written or trained
    assert not (tmp_path / "r2" / "log.jsonl").exists()


def test_train_resume_eval_predict_with_descriptions(world, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    run, split = tmp_path / "run", tmp_path / "split"
    argv = ["train", "--method", "mmapp", "--descriptions", str(world["descriptions"]), *world["common"]]
    assert main([*argv, "--output", str(run)]) == 0
    meta = json.loads((run / "prompts.json").read_text())
    assert meta["method"] == "mmapp" and meta["config"]["input_prompts"] == "cupl"
    assert meta["dataset"]["descriptions"] == {k: SENTENCES[k] for k in EUROSAT[:2]}  # the base classes
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all({"ce", "cos_text", "cos_image"} <= set(r) for r in log if r["event"] == "epoch")
    # an interrupted run resumes to the same adapters (the step's draws come from the saved RNG state)
    assert main([*argv, "--output", str(split), "--stop-after-epochs", "1"]) == 0
    assert main([*argv, "--output", str(split), "--resume"]) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(run / "prompts.safetensors")), load_file(str(split / "prompts.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()

    # eval: the base classes with the descriptions saved in prompts.json; the novel ones need theirs
    base = ["eval", "--checkpoint", str(run), "--dataset", "eurosat", "--data-root", str(world["root"]),
            "--subsample", "base", "--num-workers", "0", "--device", "cpu", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "base.json")]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["eval"]
    assert json.loads((tmp_path / "base.json").read_text())["accuracy"] == metrics["base"]["accuracy"]
    novel = ["new" if a == "base" else a for a in base]
    assert main(novel) == 2
    err = capsys.readouterr().err
    assert "prompts.json (the training descriptions): every class needs at least one sentence" in err
    assert "no entry for 2 class(es): 'Herbaceous Vegetation Land', 'Highway or Road'" in err
    out = tmp_path / "novel.json"
    assert main([*novel, "--descriptions", str(world["descriptions"]), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == metrics["novel"]["accuracy"]
    capsys.readouterr()

    # predict: the trained classes with the saved descriptions; new classes need --descriptions
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (20, 14), (30, 160, 40)).save(image)
    assert main(["predict", "--checkpoint", str(run), "--json", str(image)]) == 0
    assert {p["class"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]} == set(EUROSAT[:2])
    assert main(["predict", "--checkpoint", str(run), "--classes", "lake, desert", str(image)]) == 2
    assert "no entry for 2 class(es): 'lake', 'desert'" in capsys.readouterr().err
    lakes = tmp_path / "lakes.json"
    lakes.write_text(json.dumps({"lake": ["a lake."], "desert": ["sand dunes.", "a desert."]}))
    assert main(["predict", "--checkpoint", str(run), "--classes", "lake, desert", "--descriptions", str(lakes),
                 str(image)]) == 0
    assert "lake" in capsys.readouterr().out
    shutil.rmtree(split)


def test_import_official_then_evaluate_with_descriptions(tmp_path: Path) -> None:
    """An official checkpoint (folder adapter_learner, names without that prefix, no buffers) imports without
    descriptions (the adapters do not depend on them; none are saved) and, given the case's descriptions,
    reproduces the official eval logits."""
    from mmprompt.checkpoint import load_prompts
    from mmprompt.parity import reference_clip

    ref = load_reference(REFERENCE)
    case = ref.meta["cases"]["mmapp_cupl"]
    prefix = "mmapp_cupl/param/adapter_learner."
    state = {k[len(prefix):]: torch.from_numpy(v) for k, v in ref.arrays.items() if k.startswith(prefix)}
    folder = tmp_path / "official" / "adapter_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 50, "optimizer": {}, "scheduler": {}}, folder / "model.pth.tar-50")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "official"), "--method", "mmapp", "-o", str(out), "--arch",
                 "tiny-parity", "--set", "adapter_drop=0.1"]) == 0
    meta = json.loads((out / "prompts.json").read_text())
    assert meta["config"]["input_prompts"] == "cupl" and "descriptions" not in meta["dataset"]
    assert (meta["config"]["adapter_start"], meta["config"]["adapter_end"]) == (4, 10)
    clip = reference_clip(ref)
    with pytest.raises(ConfigError, match="needs class descriptions"):
        load_prompts(out, clip, classnames=ref.meta["classnames"])
    learner = load_prompts(out, clip, classnames=ref.meta["classnames"],
                           dataset=DatasetContext(descriptions=case["descriptions"])).eval()
    with torch.no_grad():
        logits = learner(torch.from_numpy(ref.arrays["images"]))
    torch.testing.assert_close(logits, torch.from_numpy(ref.arrays["mmapp_cupl/logits"]), rtol=1e-4, atol=1e-4)


def test_speed_command_runs_mmapp_beside_the_reference_path(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["speed", "--method", "mmapp", "--random-weights", "--arch", "tiny", "--classes", "6", "--steps", "1",
                 "--warmup", "0", "--eval-images", "2", "--no-isolate", "--option", "adapter_start=2",
                 "--option", "adapter_end=4", "--option", "adapter_dim=8", "--json"])
    assert code == 0
    [entry] = json.loads(capsys.readouterr().out)["results"]
    for path in ("default", "reference"):
        assert entry[path]["error"] == "" and entry[path]["train_step_s"] > 0
        assert entry[path]["config"]["synthetic_descriptions_per_class"] == 20
    assert entry["comparison"]["train_speedup"] > 0


def test_benchmark_gives_descriptions_to_the_methods_that_read_them(world, tmp_path: Path) -> None:  # noqa: ANN001
    """One folder of <dataset>.json files serves a sweep; methods that read no descriptions do not get them."""
    folder = tmp_path / "descriptions"
    folder.mkdir()
    (folder / "eurosat.json").write_text(json.dumps(SENTENCES))
    common = [a for a in world["common"] if a not in ("--dataset", "eurosat")]
    assert main(["benchmark", "base2novel", "--method", "mmapp", "zeroshot", "--datasets", "eurosat", "--seeds", "1",
                 "--output", str(tmp_path / "sweep"), "--descriptions", str(folder), *common]) == 0
    configs = {p.relative_to(tmp_path / "sweep").parts[0]: p.read_text() for p in (tmp_path / "sweep").rglob("config.yaml")}
    assert set(configs) == {"mmapp", "zeroshot"}, configs.keys()
    assert f"descriptions: {folder}" in configs["mmapp"] and "descriptions: null" in configs["zeroshot"]


def test_cross_dataset_uses_each_datasets_own_descriptions(tmp_path: Path) -> None:
    """The x2d recipe: trained on ImageNet with its descriptions, evaluated on a target with the target's own
    file from the same folder."""
    from fake_datasets import expected_classnames
    from mmprompt.protocols import run_transfer

    root = make_data_root(tmp_path / "data", ("imagenet", "eurosat"))
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    folder = tmp_path / "descriptions"
    folder.mkdir()
    for name in ("imagenet", "eurosat"):
        (folder / f"{name}.json").write_text(json.dumps({c: [f"a photo of {c}.", f"{c}, up close."]
                                                          for c in expected_classnames(name, 4)}))
    overrides = ["optim.epochs=1", "data.num_workers=0", f"data.descriptions={folder}",
                 *[f"method.{k}={v}" for k, v in SMALL.items()]]
    kwargs = dict(overrides=overrides, progress=False, shots=2, clip_activation="quick_gelu", device="cpu")
    xd = run_transfer("cross-dataset", ["mmapp"], ["eurosat"], [1], root, str(weights), tmp_path / "xd", **kwargs)
    source = tmp_path / "xd" / "mmapp" / "imagenet" / "source-2shots" / "seed1"
    evaluated = json.loads((source / "eval" / "eurosat.json").read_text())
    assert sorted(evaluated["per_class_accuracy"]) == sorted(expected_classnames("eurosat", 4))
    assert xd["methods"]["mmapp"]["average"]["datasets"] == ["eurosat"]
    saved = json.loads((source / "prompts.json").read_text())["dataset"]["descriptions"]
    assert set(saved) == set(expected_classnames("imagenet", 4))  # the source's own, not the target's
    (folder / "eurosat.json").unlink()  # a target without its file: said, not replaced by the source's
    kwargs["overrides"] = [*overrides, "method.adapter_drop=0.2"]  # another run folder
    failed = run_transfer("cross-dataset", ["mmapp"], ["eurosat"], [1], root, str(weights), tmp_path / "xd2", **kwargs)
    [failure] = failed["failed"]
    assert "eurosat.json does not exist): pass --descriptions FILE" in failure["cause"]
