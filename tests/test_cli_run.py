"""``mmprompt train / eval / predict`` and the Predictor API on a tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmprompt.cli import main
from mmprompt.predict import Predictor
from test_engine_support import make_data_root, one_thread, save_tiny_clip

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
FAST = ["optim.epochs=2", "method.depth=2", "log.every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMPROMPT_CACHE", str(base / "cache"))
    root = make_data_root(base / "data")
    weights = save_tiny_clip(base / "tiny.pt")
    run = base / "run"
    argv = ["train", "--config", "maple_b2n", "--dataset", "eurosat", "--data-root", str(root), "--clip", str(weights),
            "--clip-activation", "quick_gelu", "--output", str(run), "--shots", "2", "--num-workers", "0",
            "--device", "cpu", "--no-progress", "--set", *FAST]
    assert main(argv) == 0
    yield {"root": root, "weights": weights, "run": run, "base": base, "argv": argv}
    mp.undo()


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (20, 14), colour).save(path)
    return path


def test_train_writes_everything(trained) -> None:
    run = trained["run"]
    for name in ("config.yaml", "metrics.json", "prompts.json", "prompts.safetensors", "log.jsonl",
                 "checkpoint/state.pt"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"base", "novel"} and metrics["status"] == "done"
    meta = json.loads((run / "prompts.json").read_text())
    assert meta["clip"]["weights"] == str(trained["weights"].absolute())
    assert len(meta["clip"]["sha256"]) == 64 and meta["clip"]["activation"] == "quick_gelu"
    assert meta["classnames"] == ["Annual Crop Land", "Forest"]
    cfg = (run / "config.yaml").read_text()
    assert "epochs: 2" in cfg and "dataset: eurosat" in cfg


def test_train_refuses_a_used_folder_without_resume(trained) -> None:
    assert main(trained["argv"]) == 2
    assert main([*trained["argv"], "--resume"]) == 0  # finished: nothing to do, metrics kept


def test_train_stop_and_resume_via_cli(trained, tmp_path: Path) -> None:
    argv = [a if a != str(trained["run"]) else str(tmp_path / "r") for a in trained["argv"]]
    assert main([*argv, "--stop-after-epochs", "1"]) == 0
    assert not (tmp_path / "r" / "metrics.json").exists()
    assert main([*argv, "--resume"]) == 0
    a, b = load_file(str(trained["run"] / "prompts.safetensors")), load_file(str(tmp_path / "r" / "prompts.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_on_novel_classes_and_zero_shot(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "novel.json"
    assert main(["eval", "--checkpoint", str(trained["run"]), "--dataset", "eurosat", "--data-root", str(trained["root"]),
                 "--subsample", "new", "--num-workers", "0", "--device", "cpu", "--no-progress",
                 "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    trained_metrics = json.loads((trained["run"] / "metrics.json").read_text())
    assert res["accuracy"] == trained_metrics["eval"]["novel"]["accuracy"]
    assert sorted(res["per_class_accuracy"]) == ["Herbaceous Vegetation Land", "Highway or Road"]
    assert main(["eval", "--method", "zeroshot", "--clip", str(trained["weights"]), "--clip-activation", "quick_gelu",
                 "--dataset", "eurosat", "--data-root", str(trained["root"]), "--num-workers", "0", "--device", "cpu",
                 "--no-progress"]) == 0
    assert "eurosat (all, 4 classes): top-1" in capsys.readouterr().out
    assert main(["eval", "--dataset", "eurosat", "--data-root", str(trained["root"])]) == 2


def test_predict_cli(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    imgs = [str(_image(tmp_path / "a.png", (10, 200, 30))), str(_image(tmp_path / "b.jpg", (200, 10, 30)))]
    names = tmp_path / "names.txt"
    names.write_text("forest\nriver\n\nsea or lake\n")
    assert main(["predict", "--checkpoint", str(trained["run"]), "--classes", f"@{names}", "--top-k", "2", "--json",
                 *imgs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["image"] for o in out] == imgs
    for o in out:
        probs = [p["probability"] for p in o["predictions"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert {p["class"] for p in o["predictions"]} <= {"forest", "river", "sea or lake"}
    assert main(["predict", "--method", "zeroshot", "--clip", str(trained["weights"]), "--clip-activation",
                 "quick_gelu", "--classes", "cat, dog", imgs[0]]) == 0
    text = capsys.readouterr().out
    assert imgs[0] in text and "cat" in text and "dog" in text


def test_predictor_api(trained, tmp_path: Path) -> None:
    img = _image(tmp_path / "x.png", (120, 60, 200))
    p = Predictor.from_checkpoint(trained["run"])  # the CLIP recorded in the checkpoint, checksum verified
    assert p.classes == ["Annual Crop Land", "Forest"]
    p.set_classes(["forest", "river", "sea or lake", "highway"])
    preds = p.predict([img, Image.open(img)], top_k=10)
    assert len(preds) == 2 and len(preds[0]) == 4  # top_k is capped by the number of classes
    assert [n for n, _ in preds[0]] == [n for n, _ in preds[1]]  # a path and the opened image agree
    assert [q for _, q in preds[0]] == pytest.approx([q for _, q in preds[1]])
    assert sum(prob for _, prob in preds[0]) == pytest.approx(1.0, abs=1e-5)
    # the same as the learner's own logits
    logits = p.logits([img])
    assert preds[0][0][0] == p.classes[int(logits.argmax())]
    with pytest.raises(ValueError, match="distinct"):
        p.set_classes(["a", "a"])
    zs = Predictor.zero_shot(trained["weights"], ["red", "blue"], clip_activation="quick_gelu")
    assert [n for n, _ in zs.predict(img, top_k=1)[0]][0] in {"red", "blue"}


def test_predictor_checks_the_clip_weights(trained, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained["run"], run)
    other = save_tiny_clip(tmp_path / "other.pt", seed=1)
    meta = json.loads((run / "prompts.json").read_text())
    meta["clip"]["weights"] = str(other)
    (run / "prompts.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="SHA-256"):
        Predictor.from_checkpoint(run)
    Predictor.from_checkpoint(run, clip=other, clip_activation="quick_gelu")  # an explicit CLIP is used as given
