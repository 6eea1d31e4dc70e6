"""Corrupt and unusual inputs: high-bit-depth images, transparency, bad CSVs and class-name files, data check
findings, the pre-flight image check and its cache, presets on a smaller CLIP, loader workers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmprompt.cli import main
from mmprompt.data import CorruptImageError, SplitFileError, build_dataset
from mmprompt.data.images import load_image
from mmprompt.data.preflight import check_images
from mmprompt.data.samples import Sample
from test_engine_support import one_thread, save_tiny_clip

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "cache"))


def _img(path: Path, colour: tuple[int, int, int] = (40, 90, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


# ------------------------------------------------------------------------------------------ decoding
def test_16bit_grey_png_is_scaled_not_white(tmp_path: Path) -> None:
    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    path = tmp_path / "g16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I;16")
    rgb = np.asarray(load_image(path)).astype(np.float64)
    expected = grey.astype(np.float64) / 65535 * 255
    assert rgb.shape == (32, 32, 3) and np.abs(rgb[..., 0] - expected).max() <= 1.0
    assert 120 < rgb.mean() < 135  # Pillow's own convert("RGB") gives ~254 (all white)


def test_transparency_is_dropped_like_the_official_pipeline(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # red, fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.asarray(load_image(path))[0, 0].tolist() == [200, 0, 0]  # as Image.convert("RGB"): not composited


def test_preflight_lists_all_bad_files_warns_once_for_16bit_and_caches(tmp_path: Path, caplog) -> None:
    samples = []
    for i in range(6):
        _img(tmp_path / f"{i}.png")
        samples.append(Sample(f"{i}.png", i % 2, f"c{i % 2}"))
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "1.png")
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "3.png")
    (tmp_path / "2.png").write_bytes(b"junk")
    (tmp_path / "4.png").write_bytes((tmp_path / "0.png").read_bytes()[:40])  # truncated
    with caplog.at_level(logging.WARNING, logger="mmprompt.data"), pytest.raises(CorruptImageError) as err:
        check_images(samples, tmp_path, what="toy train", cache_dir=tmp_path / "c")
    assert str(tmp_path / "2.png") in str(err.value) and str(tmp_path / "4.png") in str(err.value)
    assert "2 of 6 images" in str(err.value) and "toy train" in str(err.value)
    assert sum("more than 8 bits" in r.getMessage() for r in caplog.records) == 1
    cache = next((tmp_path / "c" / "imagecheck").glob("*.json"))
    entries = json.loads(cache.read_text())["files"]
    assert entries[str(tmp_path / "1.png")][2].startswith("I") and entries[str(tmp_path / "2.png")][3]
    # cached: an unchanged file is not decoded again; a changed one is (size or mtime differ)
    import mmprompt.data.preflight as pf

    calls = []
    real = pf.probe_image
    pf.probe_image = lambda p: calls.append(p) or real(p)
    try:
        _img(tmp_path / "2.png")
        found = check_images(samples, tmp_path, what="toy train", cache_dir=tmp_path / "c", skip_corrupt=True)
    finally:
        pf.probe_image = real
    assert calls == [tmp_path / "2.png"]
    assert [p for p, _ in found.bad] == [str(tmp_path / "4.png")] and len(found.kept) == 5


# ------------------------------------------------------------------------------------------ custom CSVs
def _csv(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _img(tmp_path / name)
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_header_error_says_what_is_expected(tmp_path: Path) -> None:
    path = _csv(tmp_path, "img,lbl,split\na.png,cat,train\nb.png,dog,test\n")
    with pytest.raises(SplitFileError, match=r"line 1: the header 'img,lbl,split' has no path column; expected one of path"):
        build_dataset("custom", path)


def test_csv_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,label\na.png,caf\u00e9\nb.png,th\u00e9\n", encoding="latin-1")
    with pytest.raises(SplitFileError, match=rf"{path}: the CSV file is not UTF-8"):
        build_dataset("custom", path)


def test_label_case_variant_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,label,split\na.png,Cat,train\nb.png,dog,train\nc.png,cat ,test\nd.png,dog,test\n")
    with pytest.raises(SplitFileError, match=r"line 4: label 'cat' differs from 'Cat' \(line 2\)"):
        build_dataset("custom", path)


def test_unknown_label_with_a_classnames_file_names_the_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,label,split\na.png,cat,train\nb.png,dgo,train\nc.png,cat,test\nd.png,dog,test\n")
    names = tmp_path / "names.txt"
    names.write_text("# classes\ncat\ndog\n")
    with pytest.raises(SplitFileError, match=r"line 3: label 'dgo' is not in .*names.txt"):
        build_dataset("custom", path, classnames_file=names)


def test_integer_labels_train_from_the_cli_with_classnames(tmp_path: Path, capsys) -> None:
    rows = ["path,label,split"]
    for i in range(12):
        name = f"img{i}.png"
        _img(tmp_path / "d" / name, (i * 20, 100, 255 - i * 20))
        rows.append(f"{name},{i % 2},{'train' if i < 8 else 'test'}")
    csv = tmp_path / "d" / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    names = tmp_path / "names.txt"
    names.write_text("red thing\nblue thing\n")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    out = tmp_path / "run"
    argv = ["train", "--config", "coop", "--dataset", "custom", "--data-root", str(csv), "--classnames", str(names),
            "--clip", str(weights), "--clip-activation", "quick_gelu", "--output", str(out), "--shots", "2",
            "--device", "cpu", "--no-progress", "--set", "optim.epochs=1", "method.n_ctx=2"]
    assert main(argv) == 0
    assert json.loads((out / "prompts.json").read_text())["classnames"] == ["red thing", "blue thing"]
    assert f"classnames_file: {names}" in (out / "config.yaml").read_text()


def test_data_check_warns_and_fails_on_empty_split(tmp_path: Path, capsys) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _img(tmp_path / name)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({
        "train": [["a.png", 0, "cat"], ["a.png", 0, "cat"], ["b.png", 0, "cat"]],
        "val": [], "test": [["b.png", 0, "cat"], ["c.png", 1, "dog"]]}))
    assert main(["data", "check", "--dataset", "custom", "--data-root", str(tmp_path), "--split-file", str(split),
                 "--verify-images"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 1 image(s) listed more than once in train: a.png" in out
    assert "WARNING: 1 image(s) are in both train and test" in out and "b.png" in out
    assert "WARNING: 1 class(es) have no training image: 'dog' (label 1)" in out
    assert "image modes: RGB 5" in out
    split.write_text(json.dumps({"train": [["a.png", 0, "cat"]], "val": [], "test": []}))
    assert main(["data", "check", "--dataset", "custom", "--data-root", str(tmp_path), "--split-file", str(split)]) == 1
    assert "PROBLEM: the test split is empty" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ new-user path
def test_preset_depths_scale_to_a_smaller_clip_or_are_refused(tmp_path: Path, caplog) -> None:
    from mmprompt.clip import CLIP, get_config
    from mmprompt.config import ConfigError, load_config
    from mmprompt.engine.fit import fit_depths_to_clip, refuse_explicit_depths

    clip = CLIP(get_config("tiny"))  # 4 layers per tower
    with caplog.at_level(logging.WARNING, logger="mmprompt.engine.fit"):
        fitted = fit_depths_to_clip(load_config("maple_b2n"), clip)
    assert fitted.method.options["depth"] == 3  # J = 9 of 12 -> 3 of 4
    assert any("method.depth=9" in r.getMessage() and "method.depth=3" in r.getMessage() for r in caplog.records)
    ivlp = fit_depths_to_clip(load_config("ivlp_b2n"), clip).method_config()
    assert ivlp.depth_text <= 4 and ivlp.depth_vision <= 4
    ok = load_config("maple_b2n", ["method.depth=2"])
    assert fit_depths_to_clip(ok, clip) is ok
    with pytest.raises(ConfigError, match=r"use --set method.depth=3 \(at most 4\)"):
        refuse_explicit_depths(load_config("maple_b2n", ["method.depth=9"]), clip, ["method.depth=9"])


def test_loader_workers_follow_the_machine(monkeypatch) -> None:
    from mmprompt.config import RunConfig
    from mmprompt.engine.loader import default_workers

    assert RunConfig().data.num_workers is None
    for cores, expected in ((1, 0), (2, 0), (4, 3), (16, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert default_workers() == expected
    assert default_workers(5) == 5


def test_run_check_warns_once_per_dataset_for_16bit(tmp_path: Path, caplog) -> None:
    from mmprompt.data.preflight import check_run_images
    from mmprompt.data.samples import DatasetSplits

    samples = []
    for i in range(4):
        Image.fromarray(np.full((8, 8), 1000 * (i + 1), dtype=np.uint16)).save(tmp_path / f"{i}.png")
        samples.append(Sample(f"{i}.png", i % 2, f"c{i % 2}"))
    splits = DatasetSplits("toy", ["c0", "c1"], samples[:2], [], samples[2:], tmp_path, "a photo of a {}.")
    with caplog.at_level(logging.WARNING, logger="mmprompt.data"):
        _, _, report = check_run_images(splits, {"base": splits, "novel": splits}, check_train=True,
                                        skip_corrupt=False)
    warnings = [r.getMessage() for r in caplog.records if "more than 8 bits" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("toy: 4 images")
    assert report["splits"]["toy train"]["modes"] == {"I;16": 2}


def test_data_check_flags_a_likely_label_typo(tmp_path: Path, capsys) -> None:
    rows = ["path,label,split"]
    for i in range(13):
        _img(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'cat' if i < 6 else 'dog' if i < 12 else 'dgo'},{'test' if i % 3 == 0 else 'train'}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    assert main(["data", "check", "--dataset", "custom", "--data-root", str(tmp_path / "data.csv")]) == 0
    assert "single image in all splits (a label typo?): 'dgo' (label 1)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ wave 3 (issue 22)
class _FifoWatchdog:
    """Feeds a FIFO after ``delay`` seconds if someone is blocked reading it, so that code which opens it as
    a file fails the test instead of hanging it."""

    def __init__(self, fifo: Path, delay: float = 5.0) -> None:
        import threading

        self.fifo, self.stop = fifo, threading.Event()
        self.thread = threading.Thread(target=self._run, args=(delay,), daemon=True)
        self.thread.start()

    def _run(self, delay: float) -> None:
        import errno
        import time

        end = time.monotonic() + delay
        while not self.stop.wait(0.05):
            if time.monotonic() < end:
                continue
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nobody reading
                    continue
                return
            os.write(fd, b"not an image")
            os.close(fd)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_fifo_named_as_an_image_is_refused_everywhere_without_hanging(tmp_path: Path, capsys) -> None:
    rows = ["path,label,split"]
    for i in range(8):
        _img(tmp_path / "d" / f"img{i}.png", (i * 30, 100, 200))
        rows.append(f"img{i}.png,{('cat', 'dog')[i % 2]},{'train' if i < 6 else 'test'}")
    csv = tmp_path / "d" / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    fifo = tmp_path / "d" / "img0.png"
    fifo.unlink()
    os.mkfifo(fifo)
    dog = tmp_path / "d" / "img1.png"
    watchdog = _FifoWatchdog(fifo)
    try:
        with pytest.raises(CorruptImageError, match="is a FIFO"):
            load_image(fifo)
        assert main(["data", "check", "--dataset", "custom", "--root", str(csv), "--verify-images"]) == 1
        printed = capsys.readouterr()
        assert str(fifo) in printed.out + printed.err and "FIFO" in printed.out + printed.err
        weights = save_tiny_clip(tmp_path / "tiny.pt")
        out = tmp_path / "run"
        assert main(["train", "--config", "coop", "--dataset", "custom", "--data-root", str(csv), "--clip",
                     str(weights), "--clip-activation", "quick_gelu", "--output", str(out), "--shots", "2",
                     "--device", "cpu", "--no-progress", "--set", "optim.epochs=1", "method.n_ctx=2"]) == 3
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"{fifo} (" in err and "FIFO" in err
        assert not (out / "prompts.safetensors").exists()
        assert main(["predict", "--method", "zeroshot", "--clip", str(weights), "--clip-activation", "quick_gelu",
                     "--classes", "cat,dog", "--json", str(fifo), str(dog)]) == 1
        printed = capsys.readouterr()
        got = json.loads(printed.out)
        assert "FIFO" in got[0]["error"] and got[1]["predictions"] and "Traceback" not in printed.err
    finally:
        watchdog.close()


def test_duplicate_class_names_are_an_error_everywhere(tmp_path: Path, capsys) -> None:
    rows = ["path,label,split"]
    for i in range(12):
        _img(tmp_path / "csv" / f"img{i}.png", (i * 20, 100, 200))
        rows.append(f"img{i}.png,{i % 3},{'train' if i < 9 else 'test'}")
    csv = tmp_path / "csv" / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\ncat\n")
    split = tmp_path / "split" / "split.json"
    _img(tmp_path / "split" / "a.png")
    _img(tmp_path / "split" / "b.png")
    split.write_text(json.dumps({"train": [["a.png", 0, "cat"], ["b.png", 1, "cat"]], "val": [],
                                 "test": [["a.png", 0, "cat"], ["b.png", 1, "cat"]]}))
    folders = tmp_path / "folders"
    for c in ("tabby", "siamese", "dog"):
        for i in range(5):
            _img(folders / c / f"{i}.png")
    folder_names = tmp_path / "folder_names.txt"
    folder_names.write_text("tabby cat\nsiamese cat\ndog dog\n")
    cases = [(["--root", str(csv), "--classnames", str(names)], names),
             (["--root", str(tmp_path / "split"), "--split-file", str(split)], split),
             (["--root", str(folders), "--classnames", str(folder_names)], folder_names)]
    for extra, where in cases:
        assert main(["data", "check", "--dataset", "custom", *extra]) == 3
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(where) in err and "class names must be distinct" in err, err
        assert "'cat' names labels 0, " in err
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    out = tmp_path / "run"
    assert main(["train", "--config", "coop", "--dataset", "custom", "--data-root", str(csv), "--classnames", str(names),
                 "--clip", str(weights), "--clip-activation", "quick_gelu", "--output", str(out), "--shots", "2",
                 "--device", "cpu", "--no-progress", "--set", "optim.epochs=1", "method.n_ctx=2"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'cat' names labels 0, 2" in err and not (out / "prompts.json").exists()


def test_very_long_class_name_gets_a_short_message(tmp_path: Path, capsys) -> None:
    rows = ["path,label,split"]
    long_name = "x" * 3000
    for i in range(12):
        _img(tmp_path / "d" / f"img{i}.png", (i * 20, 100, 200))
        rows.append(f"img{i}.png,{('cat', long_name)[i % 2]},{'train' if i < 8 else 'test'}")
    csv = tmp_path / "d" / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    weights = save_tiny_clip(tmp_path / "tiny.pt")
    assert main(["train", "--config", "coop", "--dataset", "custom", "--data-root", str(csv), "--clip", str(weights),
                 "--clip-activation", "quick_gelu", "--output", str(tmp_path / "run"), "--shots", "2", "--device",
                 "cpu", "--no-progress", "--set", "optim.epochs=1", "method.n_ctx=2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "more than the context length" in err and "characters)" in err
    assert len(err) < 500 and "truncate=True" not in err


def test_label_typo_is_said_by_train_too_and_is_an_error_with_classnames(tmp_path: Path, capsys, caplog) -> None:
    rows = ["path,label,split"]
    for i in range(13):
        _img(tmp_path / "d" / f"{i}.png", (i * 15, 90, 200))
        label = "cat" if i < 6 else "dog" if i < 12 else "pink elephant"
        rows.append(f"{i}.png,{label},{'test' if i % 3 == 0 else 'train'}")
    csv = tmp_path / "d" / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    weights = save_tiny_clip(tmp_path / "tiny.pt")

    def train(out: Path, *extra: str) -> int:
        return main(["train", "--config", "coop", "--dataset", "custom", "--data-root", str(csv), *extra, "--clip",
                     str(weights), "--clip-activation", "quick_gelu", "--output", str(out), "--shots", "2",
                     "--device", "cpu", "--no-progress", "--set", "optim.epochs=1", "method.n_ctx=2"])

    with caplog.at_level(logging.WARNING):
        assert train(tmp_path / "run") == 0
    warned = [r.getMessage() for r in caplog.records if "label typo" in r.getMessage()]
    assert len(warned) == 1 and "'pink elephant'" in warned[0]
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert train(tmp_path / "run2", "--classnames", str(names)) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "label 'pink elephant' is not in" in err and str(names) in err
    assert not (tmp_path / "run2" / "prompts.json").exists()
    assert main(["data", "check", "--dataset", "custom", "--root", str(csv), "--classnames", str(names)]) == 3
    assert "label 'pink elephant' is not in" in capsys.readouterr().err
