"""Custom datasets: folders of classes, train/test folders, CSV files, class-names files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmprompt.data import DatasetNotFoundError, SplitFileError, build_dataset, read_split_file
from mmprompt.data.custom import build_custom_dataset


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (len(path.name) * 9 % 256, 3, 5)).save(path)


def _class_folders(root: Path, counts: dict[str, int], prefix: str = "") -> None:
    for cls, n in counts.items():
        for i in range(n):
            _img(root / prefix / cls / f"{i:03d}.jpg")


def _listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_folder_per_class_generates_and_caches_split(tmp_path: Path) -> None:
    data = tmp_path / "pets"
    _class_folders(data, {"dog": 10, "cat": 7, "bird": 4})
    before = _listing(data)
    splits = build_dataset("custom", data, cache_dir=tmp_path / "cache")
    assert splits.classnames == ["bird", "cat", "dog"]
    assert _listing(data) == before  # nothing written into the dataset folder
    counts = {
        k: [sum(s.label == y for s in splits.split(k)) for y in range(3)] for k in ("train", "val", "test")
    }
    assert counts == {
        "train": [2, 4, 5],
        "val": [1, 1, 2],
        "test": [1, 2, 3],
    }  # round(n*.5), round(n*.2), rest
    saved = list((tmp_path / "cache" / "splits").rglob("split.json"))
    assert len(saved) == 1 and read_split_file(saved[0]) == (splits.train, splits.val, splits.test)
    assert splits.template == "a photo of a {}."
    assert all(splits.abspath(s).is_file() for s in splits.test)


def test_custom_fewshot_and_base_new(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _class_folders(data, {f"class{i}": 12 for i in range(5)})
    base = build_dataset("custom", data, shots=2, seed=1, subsample="base", cache_dir=tmp_path / "c")
    new = build_dataset("custom", data, shots=2, seed=1, subsample="new", cache_dir=tmp_path / "c")
    assert base.classnames == ["class0", "class1", "class2"] and new.classnames == ["class3", "class4"]
    assert len(base.train) == 6 and len(new.train) == 4
    assert len(base.val) == 6  # min(2, 4) per class
    assert len(list((tmp_path / "c" / "fewshot" / "custom_d").glob("split-*/shot_2-seed_1.json"))) == 1


def test_classnames_file_sets_order_and_names(tmp_path: Path) -> None:
    data = tmp_path / "sat"
    _class_folders(data, {"SeaLake": 4, "Forest": 4, "river bank": 4})
    names = tmp_path / "names.txt"
    names.write_text("SeaLake Sea or Lake\nriver bank\nForest Forest Land\n")
    splits = build_custom_dataset(data, classnames_file=names, cache_dir=tmp_path / "c")
    assert splits.classnames == ["Sea or Lake", "river bank", "Forest Land"]
    assert {s.path.split("/")[0] for s in splits.train if s.label == 0} == {"SeaLake"}
    names.write_text("SeaLake Sea or Lake\nForest\n")
    with pytest.raises(SplitFileError, match="river bank"):
        build_custom_dataset(data, classnames_file=names, cache_dir=tmp_path / "c")
    names.write_text("Lake Sea\n")
    with pytest.raises(SplitFileError, match="line 1"):
        build_custom_dataset(data, classnames_file=names, cache_dir=tmp_path / "c")


def test_train_val_test_folders(tmp_path: Path) -> None:
    data = tmp_path / "tvt"
    _class_folders(data, {"a": 5, "b": 5}, "train")
    _class_folders(data, {"a": 2, "b": 3}, "test")
    splits = build_custom_dataset(data, cache_dir=tmp_path / "c")
    assert splits.classnames == ["a", "b"]
    assert len(splits.val) == 2 and len(splits.train) == 8  # 20% of train held out per class
    assert len(splits.test) == 5 and all(s.path.startswith("test/") for s in splits.test)
    _class_folders(data, {"a": 1, "b": 1}, "val")
    splits = build_custom_dataset(data, cache_dir=tmp_path / "c")
    assert len(splits.val) == 2 and len(splits.train) == 10


def test_csv_with_names_header_and_split(tmp_path: Path) -> None:
    rows = []
    for cls, n in {"zebra": 4, "ant": 5}.items():
        for i in range(n):
            _img(tmp_path / "imgs" / f"{cls}{i}.png")
            rows.append(f"imgs/{cls}{i}.png,{cls},{'test' if i == 0 else 'train'}")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,class,split\n" + "\n".join(rows) + "\n")
    splits = build_dataset("custom", csv_path, cache_dir=tmp_path / "c")
    assert splits.classnames == ["ant", "zebra"]
    assert len(splits.test) == 2 and len(splits.val) == 2 and len(splits.train) == 5
    assert splits.image_dir == tmp_path

    csv_path.write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")  # no header, no split
    splits = build_dataset("custom", csv_path, cache_dir=tmp_path / "c")
    assert [len(splits.split(k)) for k in ("train", "val", "test")] == [2 + 2, 1 + 1, 1 + 2]


def test_csv_with_integer_labels_needs_names(tmp_path: Path) -> None:
    for i in range(8):
        _img(tmp_path / f"{i}.jpg")
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("".join(f"{i}.jpg,{i % 2}\n" for i in range(8)))
    with pytest.raises(SplitFileError, match="class-names file"):
        build_custom_dataset(csv_path, cache_dir=tmp_path / "c")
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["red panda", "koala"]))
    splits = build_custom_dataset(csv_path, classnames_file=names, cache_dir=tmp_path / "c")
    assert splits.classnames == ["red panda", "koala"]
    assert all(int(s.path[0]) % 2 == s.label for s in splits.train)


@pytest.mark.parametrize("bad", ["../x.jpg", "/abs/x.jpg"])
def test_csv_paths_must_stay_inside(tmp_path: Path, bad: str) -> None:
    csv_path = tmp_path / "l.csv"
    csv_path.write_text(f"a.jpg,cat\n{bad},dog\n")
    with pytest.raises(SplitFileError, match="line 2"):
        build_custom_dataset(csv_path, cache_dir=tmp_path / "c")


def test_custom_split_file_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _class_folders(data, {"x": 3, "y": 3})
    split = {
        "train": [["x/000.jpg", 0, "x"], ["y/000.jpg", 1, "y"]],
        "val": [["x/001.jpg", 0, "x"]],
        "test": [["y/002.jpg", 1, "y"]],
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    splits = build_dataset("custom", data, split_file=tmp_path / "split.json", cache_dir=tmp_path / "c")
    assert splits.classnames == ["x", "y"] and len(splits.train) == 2
    with pytest.raises(DatasetNotFoundError):
        build_custom_dataset(tmp_path / "missing", cache_dir=tmp_path / "c")
    _class_folders(tmp_path / "tiny", {"a": 2})
    with pytest.raises(SplitFileError, match="too few"):
        build_custom_dataset(tmp_path / "tiny", cache_dir=tmp_path / "c")


def test_folder_names_become_prompt_names_without_underscores(tmp_path: Path) -> None:
    """``blue_circle/`` is the class "blue circle" ("a photo of a blue circle."), as CoOp's names are written."""
    data = tmp_path / "shapes"
    _class_folders(data, {"blue_circle": 4, "red__star ": 4, "plain": 4})
    splits = build_dataset("custom", data, cache_dir=tmp_path / "cache")
    assert splits.classnames == ["blue circle", "plain", "red star"]
    assert splits.template.format(splits.classnames[0]) == "a photo of a blue circle."
