"""MMRL and MMRL++ beyond the per-case loop of test_parity.py: every reference tensor (each inference path's
logits, the loss terms, teacher / student features, the projected tokens, the gradients) is checked, the
official initialisation and parameter counts hold, the separate inference paths are chosen, selectable and
recorded, bad paths are refused with one line, and the methods train, resume, evaluate and predict on the
demo world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmprompt.checkpoint import load_prompts
from mmprompt.cli import main
from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.methods import DatasetContext, EncoderOptions, config_from_official, create_learner, make_config
from mmprompt.parity import load_reference, reference_clip, run_parity

REFERENCE = Path(__file__).parent / "data" / "mmrl_reference.npz"
NAMES = ["sea_or_lake", "Forest", "dog"]
SMALL = {"rep_layers": [2, 3, 4], "rep_dim": 16, "n_rep_tokens": 3}


@pytest.mark.parametrize("case", ["mmrl", "mmrlpp"])
@pytest.mark.parametrize("truncate", [True, False])
def test_every_reference_tensor_matches(case: str, truncate: bool) -> None:
    (result,) = run_parity(REFERENCE, [case], EncoderOptions(truncate_text=truncate))
    assert not result.error, result.error
    bad = [(c.name, c.max_rel) for c in result.checks if not c.ok]
    assert not bad, bad
    ref = load_reference(REFERENCE)
    checked = {c.name for c in result.checks}
    expected = {k.split("/", 1)[1] for k in ref.arrays if k.startswith(f"{case}/") and "/param/" not in k}
    assert expected <= checked, sorted(expected - checked)
    assert {"logits_base_path", "logits_novel_path", "logits_rep", "debug/rep_tokens_text",
            "student/image_features_rep"} <= checked


@pytest.mark.parametrize("case,method,count", [("mmrl", "mmrl", 83_392), ("mmrlpp", "mmrlpp", 33_728)])
def test_parameter_counts_and_official_initialisation(case: str, method: str, count: int) -> None:
    ref = load_reference(REFERENCE)
    spec = ref.meta["cases"][case]
    config = config_from_official(method, spec["official_config"], spec)
    torch.manual_seed(0)
    learner = create_learner(method, reference_clip(ref), ref.meta["classnames"], config)
    assert sum(p.numel() for p in learner.trainable_parameters()) == count
    p = learner.prompt
    if method == "mmrl":  # one Linear deep-copied per layer; proj_rep random, not visual.proj
        assert all(torch.equal(p.r2t[0].weight, layer.weight) and torch.equal(p.r2v[0].bias, q.bias)
                   for layer, q in zip(p.r2t, p.r2v, strict=True))
        assert not torch.allclose(p.proj_rep, learner.clip.visual.proj)
    else:  # B matrices start at zero, biases are copies of one Linear's bias
        assert not p.proj_B.any() and not any(r.B.any() for r in p.r2t.residual)
        assert all(torch.equal(r.bias, p.r2v.residual[0].bias) for r in p.r2v.residual)
        assert 0 < float(p.proj_A.detach().abs().max()) <= 64**-0.5 + 1e-6


def test_vit_b16_parameter_counts() -> None:
    """The spec's counts for ViT-B/16 (built on the meta device: shapes only)."""
    with torch.device("meta"):
        clip = CLIP(get_config("ViT-B/16"))
    for method, count in (("mmrl", 4_992_256), ("mmrlpp", 813_312)):
        learner_cls = create_learner.__globals__["get_method"](method).learner
        config = make_config(method)
        learner = learner_cls.__new__(learner_cls)
        torch.nn.Module.__init__(learner)
        learner.config, learner.clip, learner.trainable = config, clip, torch.nn.Module()
        with torch.device("meta"):
            learner.build_prompts()
        assert sum(t.numel() for t in learner.trainable.parameters()) == count


@pytest.fixture(scope="module")
def tiny() -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_config("tiny")).eval().requires_grad_(False)


def test_paths_differ_and_bad_paths_are_refused(tiny: CLIP) -> None:
    torch.manual_seed(1)
    learner = create_learner("mmrl", tiny, NAMES, SMALL).eval()
    images = torch.randn(2, 3, 32, 32)
    assert learner.inference_paths == ("base", "novel") and learner.inference_path == "base"
    with torch.no_grad():
        base = learner(images)
        learner.set_inference_path("novel")
        novel = learner(images)
        tensors = learner.eval_tensors(images)
    torch.testing.assert_close(base, 0.7 * novel + 0.3 * tensors["logits_rep"])
    assert not torch.allclose(base, novel)
    with pytest.raises(ValueError, match="unknown inference path 'fused'.*base, novel"):
        learner.set_inference_path("fused")
    coop = create_learner("coop", tiny, NAMES, {"n_ctx": 2})
    assert coop.protocol_path() is None
    coop.set_inference_path(None)
    with pytest.raises(ValueError, match="single inference path"):
        coop.set_inference_path("base")


def test_protocol_path_follows_the_official_test(tiny: CLIP) -> None:
    """Fusion on the training classes of the training dataset (B2N base, few-shot, the transfer source),
    the class-token head elsewhere (B2N novel, cross-dataset targets, domain generalisation)."""
    learner = create_learner("mmrlpp", tiny, NAMES, SMALL, dataset=DatasetContext("imagenet", "a photo of a {}."))
    assert learner.protocol_path() == "base"
    learner.set_classnames(["cat", "car"])
    assert learner.protocol_path() == "novel"
    learner.set_classnames(NAMES, dataset=DatasetContext("imagenetv2", "a photo of a {}."))
    assert learner.protocol_path() == "novel"
    learner.set_classnames(NAMES, dataset=DatasetContext("imagenet", "a photo of a {}."))
    assert learner.protocol_path() == "base"


def test_dataset_beta_applies_where_the_learner_is_pointed(tiny: CLIP) -> None:
    learner = create_learner("mmrlpp", tiny, NAMES, {**SMALL, "beta": 0.9, "dataset_beta": {"dtd": 0.5}},
                             dataset=DatasetContext("imagenet", "a photo of a {}."))
    assert learner.beta == 0.9
    learner.set_classnames(NAMES, dataset=DatasetContext("dtd", "{} texture."))
    assert learner.beta == 0.5


@pytest.mark.parametrize("options,match", [
    ({"rep_layers": [3, 2]}, "increasing"), ({"rep_layers": []}, "non-empty"), ({"alpha": 2}, "alpha"),
    ({"n_rep_tokens": 0}, "n_rep_tokens"),
])
def test_config_errors_are_clear(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_config("mmrl", options)
    with pytest.raises(ValueError, match="beta"):
        make_config("mmrlpp", {"beta": -0.1})


def test_layers_beyond_the_model_are_refused(tiny: CLIP) -> None:
    with pytest.raises(ValueError, match=r"rep_layers \[6, 7\] go beyond the model's 4 layers .*rep_layers=\[2,3\]"):
        create_learner("mmrl", tiny, NAMES, {"rep_layers": [6, 7]})


def test_official_config_keys() -> None:
    config = config_from_official("mmrl", {"TRAINER.MMRL": {"SCALE": 0.6, "REP_LAYERS": [3, 4], "PREC": "amp"}})
    assert (config.alpha, config.rep_layers) == (0.6, [3, 4])  # SCALE: the older name of ALPHA
    with pytest.raises(ValueError, match=r"official MMRL option\(s\) \['BETA'\]"):
        config_from_official("mmrl", {"TRAINER.MMRL": {"BETA": 0.5}})


def test_official_config_and_checkpoint_import(tmp_path: Path) -> None:
    """A Dassl checkpoint holding the whole CustomCLIP converts (the frozen CLIP is dropped) and gives the
    reference's logits; the official names map one to one."""
    ref = load_reference(REFERENCE)
    for case, folder in (("mmrl", "MultiModalRepresentationLearner"), ("mmrlpp", "MultiModalPromptLearner")):
        prefix = f"{case}/param/"
        state = {k[len(prefix):]: torch.from_numpy(v) for k, v in ref.arrays.items() if k.startswith(prefix)}
        state["image_encoder.proj"] = torch.zeros(128, 64)  # frozen CLIP tensors, as in the real file
        state["prompt_embeddings"] = torch.zeros(5, 77, 64)
        where = tmp_path / case / folder
        where.mkdir(parents=True)
        torch.save({"state_dict": state, "epoch": 10}, where / "model.pth.tar-10")
        out = tmp_path / f"{case}-imported"
        official = ref.meta["cases"][case]["official_config"]
        section = official["TRAINER.MMRL" if case == "mmrl" else "TRAINER.MMRLpp"]
        sets = [f"rep_layers={json.dumps(section['REP_LAYERS']).replace(' ', '')}"]
        sets += [f"{k}={section[k.upper()]}" for k in ("alpha", "reg_weight")]
        sets += ["beta=0.6"] if case == "mmrlpp" else []
        argv = ["import-official", str(tmp_path / case), "--method", case, "-o", str(out), "--arch", "tiny-parity",
                "--set", *sets]
        assert main(argv) == 0
        meta = json.loads((out / "prompts.json").read_text())
        assert meta["config"]["rep_dim"] == 64 and meta["config"]["n_rep_tokens"] == 5
        learner = load_prompts(out, reference_clip(ref), classnames=ref.meta["classnames"],
                               dataset=DatasetContext("dtd" if case == "mmrl" else "caltech101",
                                                      "{} texture." if case == "mmrl" else "a photo of a {}."))
        assert learner.protocol_path() == "novel"  # imported without class names: none count as trained
        learner.eval().set_inference_path("novel")
        with torch.no_grad():
            logits = learner(torch.from_numpy(ref.arrays["images"]))
        torch.testing.assert_close(logits, torch.from_numpy(ref.arrays[f"{case}/logits_novel_path"]),
                                   rtol=1e-4, atol=1e-4)


# ----- the commands on the demo world --------------------------------------------------------------
DEMO_SET = ["optim.epochs=2", "method.rep_layers=[2,3,4]", "method.rep_dim=64", "method.proj_lora_dim=8"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MMRL++ trained on the demo world's base classes, once stopped after an epoch and resumed, once straight."""
    from mmprompt.demo import generate_demo_dataset

    base = tmp_path_factory.mktemp("mmrl-demo")
    generate_demo_dataset(base / "data", seed=0)
    common = ["train", "--method", "mmrlpp", "--dataset", "mmprompt_demo", "--data-root", str(base / "data"),
              "--clip", "demo", "--num-workers", "0", "--no-progress", "--set", *DEMO_SET]
    assert main([*common, "--output", str(base / "run")]) == 0
    assert main([*common, "--output", str(base / "cut"), "--stop-after-epochs", "1"]) == 0
    assert main([*common, "--output", str(base / "cut"), "--resume"]) == 0
    return {"base": base, "run": base / "run", "cut": base / "cut", "data": base / "data"}


def test_train_records_each_evaluation_path_and_resume_is_exact(demo: dict) -> None:
    metrics = json.loads((demo["run"] / "metrics.json").read_text())
    assert metrics["method"] == "mmrlpp" and metrics["epochs"] == 2
    assert metrics["eval"]["base"]["path"] == "base" and metrics["eval"]["novel"]["path"] == "novel"
    cut = json.loads((demo["cut"] / "metrics.json").read_text())
    assert cut["train"]["resumed_from"] == 1
    assert cut["eval"]["base"]["accuracy"] == metrics["eval"]["base"]["accuracy"]
    from safetensors.torch import load_file

    a, b = load_file(str(demo["run"] / "prompts.safetensors")), load_file(str(demo["cut"] / "prompts.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_chooses_records_and_takes_a_path(demo: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["eval", "--checkpoint", str(demo["run"]), "--dataset", "mmprompt_demo", "--data-root",
              str(demo["data"]), "--num-workers", "0", "--no-progress"]
    results = {}
    for name, extra in (("new", ["--subsample", "new"]), ("base", ["--subsample", "base"]),
                        ("new_as_base", ["--subsample", "new", "--path", "base"])):
        out = tmp_path / f"{name}.json"
        assert main([*common, *extra, "--output", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    assert results["new"]["path"] == "novel" and results["base"]["path"] == "base"
    assert results["new_as_base"]["path"] == "base"
    run = json.loads((demo["run"] / "metrics.json").read_text())["eval"]
    assert results["new"]["accuracy"] == run["novel"]["accuracy"]
    assert results["base"]["accuracy"] == run["base"]["accuracy"]
    assert "novel path" in capsys.readouterr().out


def test_unknown_path_is_one_clear_line(demo: dict, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["eval", "--checkpoint", str(demo["run"]), "--dataset", "mmprompt_demo", "--data-root",
            str(demo["data"]), "--path", "fused", "--no-progress"]
    assert main(argv) == 2
    assert "no inference path 'fused'; its paths: base, novel" in caplog.text
    image = next((demo["data"] / "mmprompt_demo" / "images").rglob("*.png"))
    assert main(["predict", "--checkpoint", str(demo["run"]), str(image), "--path", "fused"]) == 2


def test_a_method_without_paths_refuses_a_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mmprompt.demo.weights import load_demo_clip

    learner = create_learner("coop", load_demo_clip(), ["a", "b"], {"n_ctx": 2})
    from mmprompt.checkpoint import save_prompts

    save_prompts(learner, tmp_path / "coop", clip_info={"name": "demo"})
    assert main(["eval", "--checkpoint", str(tmp_path / "coop"), "--dataset", "mmprompt_demo", "--data-root",
                 str(tmp_path), "--path", "base"]) == 2
    assert "coop" in caplog.text and "single inference path" in caplog.text


def test_predict_takes_the_path(demo: dict, capsys: pytest.CaptureFixture) -> None:
    images = sorted((demo["data"] / "mmprompt_demo" / "images").rglob("*.png"))[:2]
    outputs = {}
    for path in ("base", "novel"):
        assert main(["predict", "--checkpoint", str(demo["run"]), *map(str, images), "--path", path, "--json"]) == 0
        outputs[path] = json.loads(capsys.readouterr().out)
    probs = {p: [e["predictions"][0]["probability"] for e in outputs[p]] for p in outputs}
    assert probs["base"] != probs["novel"]
    from mmprompt.predict import Predictor

    predictor = Predictor.from_checkpoint(demo["run"])
    assert predictor.current_path() == "base"  # the trained classes
    predictor.set_classes(["red square", "blue circle"])
    assert predictor.current_path() == "novel"
    with pytest.raises(ValueError, match="unknown inference path"):
        Predictor(predictor.learner, path="fused")


# ----- presets and the table row -------------------------------------------------------------------
@pytest.mark.parametrize("dataset,reg,extra", [("dtd", 6.0, {}), ("eurosat", 0.01, {"rep_dim": 2048}),
                                               ("imagenet", 0.5, {}), ("caltech101", 0.5, {})])
def test_mmrl_presets_carry_the_official_per_dataset_values(dataset: str, reg: float, extra: dict) -> None:
    from mmprompt.config import load_config

    for preset in ("mmrl_b2n", "mmrl_fewshot"):
        cfg = load_config(preset, dataset=dataset)
        options = cfg.method.options if isinstance(cfg.method.options, dict) else cfg.method.options.to_dict()
        assert options["reg_weight"] == reg and options["rep_dim"] == extra.get("rep_dim", 512)
        assert cfg.optim.optimizer == "adamw" and cfg.optim.weight_decay == 5e-4 and cfg.data.crop_scale_min == 0.5
    b2n = load_config("mmrl_b2n", dataset=dataset)
    assert (b2n.optim.epochs, b2n.optim.batch_size, b2n.optim.lr) == ((5, 32) if dataset == "imagenet" else (10, 4)) + (
        0.001,)
    fewshot = load_config("mmrl_fewshot", dataset=dataset)
    assert (fewshot.optim.epochs, fewshot.optim.batch_size) == (50, 32)


def test_mmrlpp_presets_carry_the_official_tables() -> None:
    from mmprompt.config import load_config

    def options(cfg):  # noqa: ANN001, ANN202
        return cfg.method.options if isinstance(cfg.method.options, dict) else cfg.method.options.to_dict()

    assert {k: options(load_config("mmrlpp_b2n", dataset="food101"))[k] for k in ("beta", "reg_weight")} == {
        "beta": 0.1, "reg_weight": 1.0}
    fewshot = load_config("mmrlpp_fewshot", dataset="oxford_pets")
    assert (options(fewshot)["beta"], fewshot.optim.lr, fewshot.optim.epochs) == (0.7, 0.002, 100)
    xd = load_config("mmrlpp_xd")
    assert options(xd)["reg_weight"] == 0.1 and options(xd)["dataset_beta"]["imagenet_sketch"] == 0.7
    assert (xd.optim.epochs, xd.optim.warmup_epochs, xd.data.dataset) == (1, 0, "imagenet")


def test_reproduce_plans_both_methods_with_their_presets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "mmrl", "mmrlpp", "--protocols", "base2novel", "--datasets", "dtd", "imagenet",
                 "--dry-run", "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    import re

    rows = re.findall(r"^base2novel +(\w+) +(\w+) +(\d) +(\d+) +to run", out, re.M)
    assert {(m, d, int(e)) for m, d, _, e in rows} == {(m, d, 10 if d == "dtd" else 5)
                                                       for m in ("mmrl", "mmrlpp") for d in ("dtd", "imagenet")}


def test_speed_command_compares_with_the_official_computation(capsys: pytest.CaptureFixture) -> None:
    code = main(["speed", "--method", "mmrlpp", "--random-weights", "--arch", "tiny", "--classes", "10", "--steps",
                 "1", "--warmup", "0", "--eval-images", "2", "--no-isolate", "--option", "rep_layers=[2,3,4]",
                 "--option", "rep_dim=32", "--json"])
    assert code == 0
    [entry] = json.loads(capsys.readouterr().out)["results"]
    for path in ("default", "reference"):
        assert entry[path]["error"] == "" and entry[path]["train_step_s"] > 0
    assert entry["comparison"]["first_loss_abs_diff"] < 1e-4 and entry["comparison"]["train_speedup"] > 0


# ----- configurations beyond the reference file ----------------------------------------------------
def spec_forward(learner, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Class-token and representation logits written from the spec, over the full 77-token context, with
    explicit additive masks as the official blocks build them (77 x 77, then (77 + K) x (77 + K))."""
    clip, cfg = learner.clip, learner.config
    text_tokens, visual_tokens = learner.rep_tokens()
    beta = getattr(learner, "beta", None)
    k_of = {layer: k for k, layer in enumerate(cfg.rep_layers)}
    n = cfg.n_rep_tokens

    def block_with_mask(block, x, mask):  # noqa: ANN001, ANN202
        h = block.ln_1(x)
        q, k, v = block.attn.heads_of(block.attn.in_projection(h))
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if mask is not None:
            scores = scores + mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + block.attn.project(out)
        return x + block.feed_forward(block.ln_2(x))

    def tower(x, blocks, tokens, text):  # noqa: ANN001, ANN202
        for i, block in enumerate(blocks):
            layer = i + 1
            if layer in k_of:
                new = tokens[k_of[layer]].unsqueeze(0).expand(x.shape[0], -1, -1)
                if layer == cfg.rep_layers[0]:
                    x = torch.cat([x[:, :1], new, x[:, 1:]], 1)
                else:
                    prev = x[:, 1:1 + n]
                    mid = new if beta is None else beta * new + (1 - beta) * prev
                    x = torch.cat([x[:, :1], mid, x[:, 1 + n:]], 1)
            mask = torch.full((x.shape[1], x.shape[1]), float("-inf"), dtype=x.dtype).triu(1) if text else None
            x = block_with_mask(block, x, mask)
        return x

    x = learner.token_embeddings.to(clip.dtype) + clip.positional_embedding.to(clip.dtype)
    x = tower(x, clip.transformer.resblocks, text_tokens, True)
    text = clip.ln_final(x[torch.arange(x.shape[0]), learner.eot + n]) @ clip.text_projection
    v = clip.visual
    x = v.ln_pre(v.embed_patches(images))
    x = tower(x, v.transformer.resblocks, visual_tokens, False)
    image = v.ln_post(x[:, 0]) @ v.proj
    image_rep = v.ln_post(x[:, 1:1 + n]).mean(1) @ learner.rep_projection()
    t = torch.nn.functional.normalize(text, dim=-1)
    return (100 * torch.nn.functional.normalize(image, dim=-1) @ t.T,
            100 * torch.nn.functional.normalize(image_rep, dim=-1) @ t.T)


@pytest.mark.parametrize("method,options", [
    ("mmrl", {"rep_layers": [2, 4], "n_rep_tokens": 2, "rep_dim": 8}),
    ("mmrlpp", {"rep_layers": [1, 3, 4], "n_rep_tokens": 4, "rep_dim": 12, "beta": 0.3, "res_lora_dim": 2,
                "proj_lora_dim": 3}),
    ("mmrlpp", {"rep_layers": [4], "n_rep_tokens": 1, "rep_dim": 5}),
])
def test_other_configurations_follow_the_spec(method: str, options: dict) -> None:
    torch.manual_seed(3)
    clip = CLIP(get_config("tiny")).double().eval().requires_grad_(False)
    learner = create_learner(method, clip, NAMES, options, dataset=DatasetContext("dtd", "{} texture.")).double()
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want, want_rep = spec_forward(learner, images)
        got = learner.heads(images)
    # the heads are fp32 (as every method's logits); the towers ran in float64
    torch.testing.assert_close(got["logits"].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["logits_rep"].double(), want_rep, rtol=1e-5, atol=1e-5)
    assert float((want - want_rep).abs().max()) > 1e-3  # the two heads differ: the check sees both


def test_bf16_training_step_runs_and_stays_close() -> None:
    torch.manual_seed(0)
    clip = CLIP(get_config("tiny")).eval().requires_grad_(False)
    learner = create_learner("mmrlpp", clip, NAMES, SMALL)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    full = learner(images, labels).total.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = learner(images, labels)
    low.total.backward()
    assert torch.isfinite(low.total) and abs(float(low.total.detach()) - float(full)) < 0.05 * abs(float(full))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.trainable_parameters())


def test_sweep_results_record_the_inference_paths(tmp_path: Path) -> None:
    assert main(["demo", "--methods", "mmrl", "--seeds", "1", "--output", str(tmp_path / "demo"), "--no-progress",
                 "--set", "optim.epochs=1"]) == 0
    results = json.loads((tmp_path / "demo" / "runs" / "results.json").read_text())
    assert results["inference_paths"] == {"mmrl": {"mmprompt_demo": {"base": "base", "novel": "novel"}}}


def test_transfer_payload_paths() -> None:
    from mmprompt.protocols.plan import RunSpec, payload_paths

    spec = RunSpec("transfer", "mmrl", "imagenet", 1, "/x", {}, ("dtd", "imagenetv2"))
    payload = {"metrics": {"eval": {"test": {"accuracy": 70.0, "path": "base"}}},
               "targets": {"dtd": {"accuracy": 40.0, "path": "novel"}, "imagenetv2": {"accuracy": 60.0, "path": "novel"}}}
    assert payload_paths(spec, payload) == {"imagenet": {"accuracy": "base"}, "dtd": {"accuracy": "novel"},
                                            "imagenetv2": {"accuracy": "novel"}}
    plain = {"metrics": {"eval": {"test": {"accuracy": 70.0}}}, "targets": {"dtd": {"accuracy": 40.0}}}
    assert payload_paths(spec, plain) == {}
