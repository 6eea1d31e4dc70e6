"""The CLI error boundary: each category of user error is a short message with its documented exit code,
no traceback; bugs keep their traceback; --debug / MMPROMPT_DEBUG show it for everything."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmprompt.cli import main
from test_engine_support import make_data_root, one_thread, save_tiny_clip

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
FAST = ["optim.epochs=2", "method.depth=2", "log.every=1"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("clifaults")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMPROMPT_CACHE", str(base / "cache"))
    root = make_data_root(base / "data")
    weights = save_tiny_clip(base / "tiny.pt")

    def argv(out: Path, *extra: str, clip: Path | str | None = None, data: Path | None = None) -> list[str]:
        return ["train", "--config", "maple_b2n", "--dataset", "eurosat", "--data-root", str(data or root),
                "--clip", str(clip or weights), "--clip-activation", "quick_gelu", "--output", str(out),
                "--shots", "2", "--num-workers", "0", "--device", "cpu", "--no-progress", *extra, "--set", *FAST]

    yield {"base": base, "root": root, "weights": weights, "argv": argv}
    mp.undo()


def _fails(capsys, argv: list[str], code: int, *needles: str) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_config_error(env, tmp_path: Path, capsys) -> None:
    _fails(capsys, [*env["argv"](tmp_path / "r"), "optim.lrr=0.1"], 2, "error (config)", "optim.lrr")
    _fails(capsys, [*env["argv"](tmp_path / "r"), "optim.lr=-1"], 2, "optim.lr must be a positive number")
    assert not (tmp_path / "r").exists()


def test_missing_and_corrupt_weights(env, tmp_path: Path, capsys) -> None:
    _fails(capsys, env["argv"](tmp_path / "r", clip=tmp_path / "nowhere.pt"), 4, "error (weights)", "nowhere.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(env["argv"](tmp_path / "r", clip=junk)) in (2, 4)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_refusal_names_the_flag(env, tmp_path: Path, capsys) -> None:
    import torch

    ts = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(ts))
    _fails(capsys, env["argv"](tmp_path / "r", clip=ts), 4, "TorchScript", "--allow-torchscript")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_and_malicious_training_state(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    assert main(env["argv"](out, "--stop-after-epochs", "1")) == 0
    state = out / "checkpoint" / "state.pt"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state.write_bytes(pickle.dumps(Payload()))
    _fails(capsys, env["argv"](out, "--resume"), 4, "error (checkpoint)", str(state), "delete it to start over")
    assert not marker.exists()  # the pickle payload was never executed
    state.write_bytes(b"\x00" * 10)
    _fails(capsys, env["argv"](out, "--resume"), 4, str(state))


def test_corrupt_prompt_checkpoint(env, tmp_path: Path, capsys) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "prompts.json").write_text("{not json")
    _fails(capsys, ["eval", "--checkpoint", str(ck), "--dataset", "eurosat", "--data-root", str(env["root"])], 4,
           "prompts.json", "not valid JSON")
    _fails(capsys, ["predict", "--checkpoint", str(tmp_path / "none"), "x.png"], 4, "prompts.json is missing")


@pytest.mark.parametrize("device", ["banana", "cuda:7"])
def test_unknown_or_missing_device(env, tmp_path: Path, capsys, device: str) -> None:
    argv = env["argv"](tmp_path / "r")
    argv[argv.index("--device") + 1] = device
    _fails(capsys, argv, 6, "error (device)", f"--device {device}")


def test_data_errors(env, tmp_path: Path, capsys) -> None:
    _fails(capsys, env["argv"](tmp_path / "r", data=tmp_path / "empty"), 3, "error (data)", "does not exist")
    split = tmp_path / "custom" / "split.json"
    split.parent.mkdir()
    split.write_text('{"train": [["../../etc/passwd", 0, "x"]], "val": [], "test": []}')
    argv = env["argv"](tmp_path / "r", "--split-file", str(split), data=tmp_path / "custom")
    argv[argv.index("eurosat")] = "custom"
    _fails(capsys, argv, 3, str(split), "outside the dataset folder")


def test_corrupt_images_are_listed_at_once_before_training(env, tmp_path: Path, capsys) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(env["root"], root)
    from mmprompt.data import build_dataset

    train = build_dataset("eurosat", root, shots=2, seed=1, subsample="base", cache_dir=os.environ["MMPROMPT_CACHE"])
    novel = build_dataset("eurosat", root, shots=0, seed=1, subsample="new")
    bad = [train.abspath(train.train[0]), novel.abspath(novel.test[-1])]  # a training and a novel test image
    for p in bad:
        p.write_bytes(b"broken")
    out = tmp_path / "r"
    err = _fails(capsys, env["argv"](out, data=root), 3, "error (data)", *(str(p) for p in bad))
    assert not (out / "checkpoint").exists() and not (out / "prompts.json").exists()  # nothing trained
    assert "--skip-corrupt" in err
    assert main(env["argv"](out, "--skip-corrupt", data=root)) == 0  # left out, and recorded
    check = json.loads((out / "metrics.json").read_text())["data_check"]
    skipped = [p for split in check["splits"].values() for p in split["skipped"]]
    assert sorted(skipped) == sorted(map(str, bad)) and check["skip_corrupt"] is True


def test_bug_keeps_its_traceback_and_debug_shows_all(env, tmp_path: Path, monkeypatch, capsys) -> None:
    import mmprompt.commands.train as train_cmd

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(train_cmd, "run", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(env["argv"](tmp_path / "r"))
    monkeypatch.undo()
    capsys.readouterr()
    plain = main([*env["argv"](tmp_path / "r"), "optim.lrr=1"])
    assert "Traceback" not in capsys.readouterr().err
    # --debug (anywhere on the line) and MMPROMPT_DEBUG=1 add the traceback and keep the exit code
    assert main(["--debug", *env["argv"](tmp_path / "r"), "optim.lrr=1"]) == plain == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and "error (config)" in err
    assert main([*env["argv"](tmp_path / "r"), "--debug", "--set", "optim.lrr=1"]) == plain
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MMPROMPT_DEBUG", "1")
    assert main([*env["argv"](tmp_path / "r"), "optim.lrr=1"]) == plain
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow
def test_real_process_prints_no_traceback(env, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mmprompt.cli", *env["argv"](tmp_path / "r", data=tmp_path / "no")],
                          env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr and str(tmp_path / "no") in proc.stderr


def test_version(capsys) -> None:
    from mmprompt import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mmprompt {__version__}"


# ------------------------------------------------------------------------------------------ predict
def test_predict_reports_bad_files_and_predicts_the_rest(env, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 14), (10, 200, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    base = ["predict", "--method", "zeroshot", "--clip", str(env["weights"]), "--clip-activation", "quick_gelu"]
    assert main([*base, "--classes", "cat,dog", "--json", str(good), str(bad), str(tmp_path / "gone.png")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [o["image"] for o in out] == [str(good), str(bad), str(tmp_path / "gone.png")]
    assert {p["class"] for p in out[0]["predictions"]} == {"cat", "dog"}
    assert str(bad) in out[1]["error"] and "missing" in out[2]["error"]
    _fails(capsys, [*base, "--classes", "", str(good)], 2, "no class names")
    names = tmp_path / "names.txt"
    names.write_text("# my classes\ncat\n\n  # another comment\ndog\n")
    assert main([*base, "--classes", f"@{names}", "--json", str(good)]) == 0
    assert {p["class"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]} == {"cat", "dog"}
    names.write_text("# only a comment\n")
    _fails(capsys, [*base, "--classes", f"@{names}", str(good)], 2, str(names), "no class names")


def test_predictor_inputs(env) -> None:
    import numpy as np
    import torch

    from mmprompt.predict import Predictor

    with pytest.raises(ValueError, match="needs the class names"):
        Predictor.zero_shot(env["weights"], [], clip_activation="quick_gelu")
    p = Predictor.zero_shot(env["weights"], ["red", "green"], clip_activation="quick_gelu")
    arr = np.zeros((14, 20, 3), dtype=np.uint8)
    arr[..., 1] = 200
    pil = Image.fromarray(arr)
    ref = p.logits([pil])
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    for image in (arr, tensor, arr.astype(np.float32) / 255.0, tensor.float() / 255.0):
        assert torch.allclose(p.logits([image]), ref, atol=1e-4), type(image)
    assert len(p.predict(arr)) == 1 and len(p.predict([arr, tensor, pil])) == 3
    with pytest.raises(ValueError, match="float image must hold values in"):
        p.predict(arr.astype(np.float32))


def test_nan_stop_is_a_message_with_exit_1(env, tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    import mmprompt.engine.train as train_mod

    real = train_mod._check_finite
    monkeypatch.setattr(train_mod, "_check_finite",
                        lambda values, *a: real({k: v * float("nan") for k, v in values.items()} if a[1] == 1
                                                else values, *a))  # NaN in epoch 2
    out = tmp_path / "r"
    _fails(capsys, env["argv"](out), 1, "error (training stopped)", "the training loss is nan at epoch 2",
           str(out / "checkpoint" / "state.pt"))
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["epoch"] == 1  # last good state kept
    monkeypatch.undo()
    _fails(capsys, [*env["argv"](out, "--resume"), "optim.lr=0.001"], 4, "optim.lr: 0.0035 -> 0.001")
    assert main([*env["argv"](out, "--resume", "--allow-config-change"), "optim.lr=0.001"]) == 0


def test_skip_corrupt_on_every_training_command() -> None:
    from mmprompt.cli import build_parser
    from mmprompt.commands.train import shortcut_overrides

    for argv in (["train", "--skip-corrupt"], ["benchmark", "base2novel", "--output", "x", "--skip-corrupt"],
                 ["eval", "--dataset", "d", "--data-root", "r", "--skip-corrupt"]):
        args = build_parser([argv[0]]).parse_args(argv)
        assert args.skip_corrupt is True
        if argv[0] != "eval":
            assert shortcut_overrides(args)["data.skip_corrupt"] is True
