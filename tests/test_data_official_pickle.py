"""The official few-shot caches (Dassl ``Datum`` pickles) are read safely; anything else is refused."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fake_datasets import make_fake_dataset
from mmprompt.cli import main
from mmprompt.data import build_dataset, load_official_fewshot
from mmprompt.data.errors import SplitFileError
from mmprompt.data.official_pickle import restricted_loads


def _install_fake_dassl(monkeypatch) -> type:
    """Put a ``dassl.data.datasets.base_dataset`` module with Dassl's ``Datum`` into sys.modules."""

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            assert isinstance(impath, str)
            self._impath = impath
            self._label = label
            self._domain = domain
            self._classname = classname

        @property
        def impath(self):
            return self._impath

        @property
        def label(self):
            return self._label

    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    Datum.__module__ = names[-1]
    Datum.__qualname__ = "Datum"
    sys.modules[names[-1]].Datum = Datum
    return Datum


def _official_pkl(
    monkeypatch, dataset_dir: Path, picks: dict, image_subdir: str, shots: int, seed: int
) -> Path:
    """Write split_fewshot/shot_K-seed_S.pkl as CoOp does, with absolute paths of another machine."""
    Datum = _install_fake_dassl(monkeypatch)
    prefix = f"/home/someone/DATA/{dataset_dir.name}/{image_subdir}/"
    data = {k: [Datum(prefix + p, y, 0, c) for p, y, c in v] for k, v in picks.items()}
    path = dataset_dir / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    for name in list(sys.modules):
        if name.startswith("dassl"):
            monkeypatch.delitem(sys.modules, name)  # the library must not need Dassl
    return path


def test_official_pickle_is_read_and_mapped(tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    dataset_dir = make_fake_dataset("caltech101", tmp_path / "data", n_classes=3, per_class=10)
    split = json.loads((dataset_dir / "split_zhou_Caltech101.json").read_text())
    # the last two train images of each class, and the last val image: not what seed 1 would draw here
    picks = {"train": [], "val": []}
    for key, k in (("train", 2), ("val", 1)):
        for label in range(3):
            picks[key] += [e for e in split[key] if e[1] == label][-k:]
    _official_pkl(monkeypatch, dataset_dir, picks, "101_ObjectCategories", shots=2, seed=1)

    ours = build_dataset(
        "caltech101", tmp_path / "data", shots=2, seed=1, cache_dir=tmp_path / "c", use_official_cache=False
    )
    with caplog.at_level("INFO", logger="mmprompt.data"):
        splits = build_dataset("caltech101", tmp_path / "data", shots=2, seed=1, cache_dir=tmp_path / "c")
    got = {k: [[s.path, s.label, s.classname] for s in splits.split(k)] for k in ("train", "val")}
    assert got == picks
    assert [s.path for s in ours.train] != [p[0] for p in picks["train"]]
    assert "official" in splits.provenance["fewshot"]
    assert any("restricted unpickler" in r.getMessage() for r in caplog.records)

    # the command line reads it too, unless told not to
    argv = ["data", "inspect", "--dataset", "caltech101", "--data-root", str(tmp_path / "data"), "--shots", "2",
            "--cache-dir", str(tmp_path / "c"), "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["train"] == [
        ["101_ObjectCategories/" + p, y] for p, y, _ in picks["train"]
    ]
    assert main([*argv, "--no-official-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["train"] == [
        ["101_ObjectCategories/" + s.path, s.label] for s in ours.train
    ]


def test_official_imagenet_pickle_has_train_only(tmp_path: Path, monkeypatch) -> None:
    make_fake_dataset("imagenet", tmp_path, n_classes=2, per_class=8)
    full = build_dataset("imagenet", tmp_path, cache_dir=tmp_path / "c")
    picks = {"train": [[s.path, s.label, s.classname] for s in full.train[:1] + full.train[-1:]]}
    _official_pkl(monkeypatch, tmp_path / "imagenet", picks, "images", shots=1, seed=2)
    splits = build_dataset("imagenet", tmp_path, shots=1, seed=2, cache_dir=tmp_path / "c")
    assert [[s.path, s.label, s.classname] for s in splits.train] == picks["train"]
    assert splits.val == splits.test == full.test


def test_pickle_from_another_split_is_an_error(tmp_path: Path, monkeypatch) -> None:
    dataset_dir = make_fake_dataset("dtd", tmp_path, n_classes=2)
    picks = {"train": [["banded/not_in_the_split.jpg", 0, "banded"]], "val": []}
    _official_pkl(monkeypatch, dataset_dir, picks, "images", shots=1, seed=1)
    with pytest.raises(SplitFileError, match="shot_1-seed_1.pkl"):
        build_dataset("dtd", tmp_path, shots=1, seed=1, cache_dir=tmp_path / "c")


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilSubprocess:
    def __reduce__(self):
        return (subprocess.call, (["true"],))


@pytest.mark.parametrize("payload", ["os.system", "subprocess", "eval"])
def test_malicious_pickles_are_refused(tmp_path: Path, payload: str) -> None:
    target = tmp_path / "pwned"
    obj = {
        "os.system": lambda: {"train": [_Evil(target)]},
        "subprocess": lambda: {"train": [_EvilSubprocess()]},
        "eval": lambda: None,
    }[payload]()
    data = pickle.dumps(obj) if payload != "eval" else b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_loads(data)
    path = tmp_path / "shot_1-seed_1.pkl"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match=str(path)):
        load_official_fewshot(path)
    assert not target.exists()


def test_malicious_pickle_in_a_dataset_stops_the_build(tmp_path: Path) -> None:
    dataset_dir = make_fake_dataset("food101", tmp_path, n_classes=2)
    target = tmp_path / "pwned"
    (dataset_dir / "split_fewshot").mkdir()
    (dataset_dir / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(
        pickle.dumps({"train": [_Evil(target)]})
    )
    with pytest.raises(pickle.UnpicklingError):
        build_dataset("food101", tmp_path, shots=2, seed=1, cache_dir=tmp_path / "c")
    assert not target.exists()


def test_plain_containers_still_load() -> None:
    assert restricted_loads(pickle.dumps({"train": [], "val": []}, protocol=0)) == {"train": [], "val": []}
    assert restricted_loads(pickle.dumps([1, (2, 3), {"a": {4}}])) == [1, (2, 3), {"a": {4}}]
