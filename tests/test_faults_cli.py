"""The CLI error boundary: each category of user error is a short message with its documented exit code,
no traceback; bugs keep their traceback; --debug / MMPROMPT_DEBUG show it for everything."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmprompt.cli import main
from mmprompt.config import ConfigError
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


# ------------------------------------------------------------------------------------------ wave 3 (issue 22)
def test_plugin_that_exits_or_crashes_on_import_is_left_out(env, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    from importlib.metadata import EntryPoint

    import mmprompt.methods.table as table

    pkg = tmp_path / "bad_plugins"
    pkg.mkdir()
    (pkg / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n")
    (pkg / "crashes_on_import.py").write_text("raise RuntimeError('boom ' * 1000)\n")
    monkeypatch.syspath_prepend(str(pkg))
    eps = [EntryPoint("exiter", "exits_on_import:SPEC", table.ENTRY_POINT_GROUP),
           EntryPoint("crasher", "crashes_on_import:SPEC", table.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(table, "entry_points", lambda group: eps)
    table.reload_plugins()
    try:
        out = tmp_path / "r"
        assert main(env["argv"](out)) == 0  # the built-in methods still work
    finally:
        table.reload_plugins()
    err = capsys.readouterr().err
    assert "Traceback" not in err and (out / "prompts.safetensors").is_file()
    warned = [r.getMessage() for r in caplog.records if "could not be loaded" in r.getMessage()]
    assert len(warned) == 2 and "sys.exit(3)" in warned[0] and "boom" in warned[1]
    assert all(len(w) < 500 for w in warned)


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e12 bytes")])
def test_training_batch_too_big_for_memory_is_one_line(env, tmp_path: Path, monkeypatch, capsys, error) -> None:
    import mmprompt.engine.train as train_mod

    def no_memory(*a, **k):
        raise error

    monkeypatch.setattr(train_mod, "backward_objective", no_memory)
    out = tmp_path / "r"
    err = _fails(capsys, [*env["argv"](out), "optim.batch_size=4"], 1, "error (out of memory)",
                 "batches of 4 images", "lower optim.batch_size")
    assert len(err.strip().splitlines()) <= 2 and not (out / "prompts.safetensors").exists()


def test_predict_decodes_one_batch_at_a_time_and_reports_an_image_too_big(env, tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    import mmprompt.data.images as images
    from mmprompt.predict import Predictor

    small = [tmp_path / f"s{i}.png" for i in range(3)]
    for i, p in enumerate(small):
        Image.new("RGB", (20, 14), (10 + 60 * i, 200, 30)).save(p)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (9600, 12), (0, 0, 0)).save(huge)
    events: list[str] = []
    real_rgb, real_load, real_predict = images.to_rgb, images.load_image, Predictor.predict

    def capped_rgb(im):  # a memory cap: decoding more than 100k pixels fails
        if im.size[0] * im.size[1] > 100_000:
            raise MemoryError
        return real_rgb(im)

    monkeypatch.setattr(images, "to_rgb", capped_rgb)
    monkeypatch.setattr(images, "load_image", lambda p: (events.append("load"), real_load(p))[1])
    monkeypatch.setattr(Predictor, "predict", lambda self, ims, **k: (events.append("predict"),
                                                                       real_predict(self, ims, **k))[1])
    argv = ["predict", "--method", "zeroshot", "--clip", str(env["weights"]), "--clip-activation", "quick_gelu",
            "--classes", "cat,dog", "--json", "--batch-size", "2", str(small[0]), str(huge), *map(str, small[1:])]
    assert main(argv) == 1
    printed = capsys.readouterr()
    got = json.loads(printed.out)
    assert "Traceback" not in printed.err
    assert "not enough memory to decode" in got[1]["error"] and "9600 x 12 pixels" in got[1]["error"]
    assert [bool(g.get("predictions")) for g in got] == [True, False, True, True]
    assert events == ["load", "load", "predict", "load", "load", "predict"]  # never every image at once


BILLION_LAUGHS = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}' if p else repr('lol')] * 9)}]\n"
    for p, k in zip(["", *"abcdefgh"], "abcdefghi", strict=True)) + "description: *i\n"

BAD_CONFIGS = [  # (YAML, what the one-line message must say); each was a hang, a traceback or a wrong run
    pytest.param(BILLION_LAUGHS, "expand to more than", id="billion-laughs"),
    pytest.param("optim:\n  lr: 0.001\n  lr: 0.002\n", "line 3: the key 'lr' is given twice (first on line 2)",
                 id="duplicate-key"),
    pytest.param('data:\n  skip_corrupt: "no"\n', "data.skip_corrupt must be true or false, got 'no'",
                 id="quoted-bool-data"),
    pytest.param('log:\n  tensorboard: "no"\n', "log.tensorboard must be true or false, got 'no'",
                 id="quoted-bool-log"),
    pytest.param('method:\n  name: maple\n  n_ctx: "four"\n', "n_ctx must be an integer, got 'four'", id="n-ctx-four"),
    pytest.param("method:\n  name: maple\n  ctx_init: [a, photo]\n", "ctx_init must be a string, got ['a', 'photo']",
                 id="ctx-init-list"),
    pytest.param("output: 42\n", "output must be a string or null, got 42", id="output-42"),
    pytest.param("description: caf\xe9\n".encode("latin-1"), "a config must be UTF-8 text; byte 16", id="not-utf8"),
    pytest.param(f"description: {'x' * 3000}\nprecision: [{'y' * 3000}]\n", "precision must be a string, got ['yyy", id="long"),
]


@pytest.mark.parametrize("text,needle", BAD_CONFIGS)
def test_bad_config_file_is_one_line_naming_file_and_field(env, tmp_path: Path, capsys, text, needle) -> None:
    config = tmp_path / "bad.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = env["argv"](tmp_path / "r")
    argv[argv.index("maple_b2n")] = str(config)
    err = _fails(capsys, argv, 2, "error (config)", str(config), needle)
    assert len(err) < 600, err  # an excerpt of the value, never all of it
    assert not (tmp_path / "r").exists()


def test_set_values_are_typed_too(env, tmp_path: Path, capsys) -> None:
    _fails(capsys, [*env["argv"](tmp_path / "r"), "log.tensorboard='no'"], 2, "log.tensorboard must be true or false")
    _fails(capsys, [*env["argv"](tmp_path / "r"), "method.n_ctx=four"], 2, "n_ctx must be an integer, got 'four'")
    _fails(capsys, [*env["argv"](tmp_path / "r"), f"method.ctx_init=[{'a' * 3000}]"], 2, "ctx_init must be a string",
           "characters)")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished MaPLe run (its prompt checkpoint is the run folder)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(env["argv"](out, "--stop-after-epochs", "1")) == 0
    assert main(env["argv"](out, "--resume")) == 0
    return out


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock", "checkpoint"))
    return dest


@pytest.mark.parametrize("damage", ["truncated", "empty", "pickled", "nan", "inf"])
def test_damaged_prompt_file_is_one_line_naming_it(env, trained: Path, tmp_path: Path, capsys, damage) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    ck = _copy_run(trained, tmp_path / "ck")
    weights = ck / "prompts.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(weights)).items()}  # not a view of the file rewritten below
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "pickled":
        torch.save(tensors, weights)
    else:
        first = sorted(tensors)[0]
        tensors[first].view(-1)[0] = float(damage)
        save_file(tensors, str(weights))
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 14), (10, 200, 30)).save(good)
    needle = "NaN or Inf" if damage in ("nan", "inf") else "is not a readable safetensors file"
    _fails(capsys, ["predict", "--checkpoint", str(ck), "--json", str(good)], 4, "error (checkpoint)", str(weights),
           needle)
    _fails(capsys, ["eval", "--checkpoint", str(ck), "--dataset", "eurosat", "--data-root", str(env["root"]),
                    "--device", "cpu", "--output", str(tmp_path / "eval")], 4, str(weights), needle)


def test_method_that_disagrees_with_the_checkpoint_is_an_error(env, trained: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 14), (10, 200, 30)).save(good)
    _fails(capsys, ["predict", "--checkpoint", str(trained), "--method", "coop", str(good)], 2,
           "--method coop disagrees with the checkpoint", "holds maple prompts")
    _fails(capsys, ["eval", "--checkpoint", str(trained), "--method", "coop", "--dataset", "eurosat", "--data-root",
                    str(env["root"]), "--device", "cpu"], 2, "--method coop disagrees")
    assert main(["predict", "--checkpoint", str(trained), "--method", "MaPLe", "--json", str(good)]) == 0


def test_other_weights_of_the_same_shape_are_named(env, trained: Path, tmp_path: Path, capsys, caplog) -> None:
    import torch

    state = torch.load(env["weights"], weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    state[key] = state[key] + 0.01
    other = tmp_path / "other" / "tiny.pt"
    other.parent.mkdir()
    torch.save(state, other)
    (other.parent / "open_clip_config.json").write_bytes((env["weights"].parent / "open_clip_config.json").read_bytes())
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 14), (10, 200, 30)).save(good)
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--checkpoint", str(trained), "--clip", str(other), "--clip-activation", "quick_gelu",
                     "--json", str(good)]) == 0
    warned = [r.getMessage() for r in caplog.records if "SHA-256" in r.getMessage()]
    assert len(warned) == 1 and str(other) in warned[0] and "results will differ" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the recorded weights themselves: no warning
        assert main(["predict", "--checkpoint", str(trained), "--clip", str(env["weights"]), "--clip-activation",
                     "quick_gelu", "--json", str(good)]) == 0
    assert not [r for r in caplog.records if "SHA-256" in r.getMessage()]


DOUBLE_CTRL_C = """
import atexit, os, signal, sys, time
import mmprompt.commands.data as cmd
def slow_cleanup():  # like joining loader workers or check threads at exit
    sys.stderr.write("cleanup\\n"); sys.stderr.flush()
    time.sleep(20)
atexit.register(slow_cleanup)
def interrupted(args):
    raise KeyboardInterrupt
cmd.run = interrupted
from mmprompt.cli import main
from mmprompt.config import ConfigError
sys.exit(main(["data", "list"]))
"""


def test_double_ctrl_c_exits_at_once_without_a_traceback(tmp_path: Path) -> None:
    import signal
    import time

    script = tmp_path / "ctrlc.py"
    script.write_text(DOUBLE_CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": SRC},
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # the first Ctrl-C was handled; now the cleanup at exit runs
        lines.append(line)
        if line.strip() == "cleanup":
            break
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)  # the second Ctrl-C
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130 and time.monotonic() - start < 10
    err = "".join(lines) + rest
    assert "mmprompt: interrupted" in err and "Traceback" not in err and "exiting now" in err


def test_sweep_override_form_on_train_says_it_is_for_sweeps(env, tmp_path: Path, capsys) -> None:
    _fails(capsys, [*env["argv"](tmp_path / "r"), "maple:method.depth=3"], 2, "maple:method.depth",
           "sets one method's runs of a sweep (benchmark, reproduce)", "method.depth=...")


def test_output_that_is_a_file_is_refused_before_loading(env, tmp_path: Path, capsys, monkeypatch) -> None:
    import mmprompt.commands.train as train_cmd

    def never(*a, **k):
        raise AssertionError("the CLIP was loaded before the output was checked")

    monkeypatch.setattr("mmprompt.engine.clip_source.resolve_clip", never)
    monkeypatch.setattr(train_cmd, "load_splits", never, raising=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    _fails(capsys, env["argv"](notes), 2, f"--output {notes} is a file, not a folder")
    _fails(capsys, env["argv"](notes / "run"), 2, f"{notes} is a file, not a folder")
    assert notes.read_text() == "mine"


def test_empty_test_split_is_refused_before_training(env, tmp_path: Path, capsys) -> None:
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 30, 100, 200)).save(tmp_path / f"img{i}.png")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [[f"img{i}.png", i % 2, ("cat", "dog")[i % 2]] for i in range(6)],
                                 "val": [], "test": []}))
    out = tmp_path / "r"
    argv = env["argv"](out, "--split-file", str(split), data=tmp_path)
    argv[argv.index("eurosat")] = "custom"
    argv[argv.index("maple_b2n")] = "coop"
    argv = [a for a in argv if a != "method.depth=2"] + ["method.n_ctx=2"]
    _fails(capsys, argv, 3, "error (data)", "the test split of", "is empty")
    assert not (out / "log.jsonl").exists() and not (out / "checkpoint").exists()  # no epoch was trained


def test_full_disk_on_the_training_log_names_it(env, tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    import mmprompt.engine.train as train_mod

    real_init = train_mod._Logger.__init__

    class FullDisk:
        def __init__(self, name: str) -> None:
            self.name = name

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    def init(self, run_dir, tensorboard):
        real_init(self, run_dir, tensorboard)
        if self.file is not None:
            self.file.close()
            self.file = FullDisk(self.file.name)

    monkeypatch.setattr(train_mod._Logger, "__init__", init)
    out = tmp_path / "r"
    _fails(capsys, env["argv"](out), 5, "error (files)", f"cannot write {out / 'log.jsonl'}: No space left on device",
           "--resume")


def test_evaluation_batch_too_big_for_memory_is_one_line(env, trained: Path, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    import mmprompt.engine.evaluate as evaluate_mod

    def no_memory(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(evaluate_mod, "autocast_context", no_memory)
    _fails(capsys, ["eval", "--checkpoint", str(trained), "--dataset", "eurosat", "--data-root", str(env["root"]),
                    "--device", "cpu"], 1, "error (out of memory)", "batches of", "lower eval_batch_size")


def test_strict_yaml_reader_keeps_what_yaml_allows() -> None:
    from mmprompt.yamlio import load_yaml_text

    assert load_yaml_text("base: &b {lr: 1, m: 2}\nopt:\n  <<: *b\n  lr: 3\n", "x")["opt"] == {"lr": 3, "m": 2}
    assert load_yaml_text("a: 1e-3\nb: '1e-3'\nc: [*x]\n".replace("*x", "1"), "x") == {"a": 0.001, "b": "1e-3",
                                                                                    "c": [1]}
    with pytest.raises(ConfigError, match=r"^f.yaml: line 3: the key 'a' is given twice \(first on line 1\)"):
        load_yaml_text("a: 1\nb: 2\na: 3\n", "f.yaml")
