"""Every benchmark dataset reads from a fake copy of its official layout with the official class names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fake_datasets import FAKE_DATASETS, SPLIT_FILES, TABLES, expected_classnames, make_fake_dataset
from mmprompt.data import (
    DATASETS,
    DatasetNotFoundError,
    SplitFileError,
    build_dataset,
    get_dataset_info,
    get_template,
    list_datasets,
    read_split_file,
)

NEEDS_MAT = {"stanford_cars", "oxford_flowers"}  # generating their split reads .mat files with SciPy


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("name", FAKE_DATASETS)
def test_reads_fake_dataset_with_split_file(name: str, tmp_path: Path) -> None:
    counts = [3, 4, 6, 7][: min(4, len(TABLES[name]))]
    dataset_dir = make_fake_dataset(name, tmp_path / "data", n_classes=len(counts), per_class=counts)
    before = _files(dataset_dir)
    splits = build_dataset(name, tmp_path / "data", cache_dir=tmp_path / "cache")

    assert splits.classnames == expected_classnames(name, len(counts))
    assert _files(dataset_dir) == before, "the dataset folder must never be written to"
    for split in (splits.train, splits.val, splits.test):
        for s in split:
            assert splits.abspath(s).is_file(), s
            assert splits.classnames[s.label] == s.classname
    info = get_dataset_info(name)
    if info.test_only:
        assert splits.train == [] and splits.val == []
        assert len(splits.test) == sum(counts)
    elif name == "imagenet":  # fake: first ceil(n/2) images of a class in train/, the rest in val/ (= test)
        assert len(splits.train) == sum(math.ceil(c / 2) for c in counts)
        assert splits.val == splits.test
        assert len(splits.test) == sum(c - math.ceil(c / 2) for c in counts)
    else:
        if name in SPLIT_FILES:  # the split read is exactly the file's content
            raw = json.loads((dataset_dir / SPLIT_FILES[name]).read_text())
            for key in ("train", "val", "test"):
                assert [[s.path, s.label, s.classname] for s in splits.split(key)] == raw[key]
        assert len(splits.train) + len(splits.val) + len(splits.test) == sum(counts)
    assert splits.template == get_template(name)


@pytest.mark.parametrize("name", [n for n in SPLIT_FILES])
def test_generates_split_when_file_missing(name: str, tmp_path: Path) -> None:
    if name in NEEDS_MAT:
        pytest.importorskip("scipy")
    counts = [4, 5, 7, 10]
    dataset_dir = make_fake_dataset(name, tmp_path / "data", n_classes=4, per_class=counts, with_split=False)
    before = _files(dataset_dir)
    splits = build_dataset(name, tmp_path / "data", cache_dir=tmp_path / "cache")

    assert splits.classnames == expected_classnames(name, 4)
    assert _files(dataset_dir) == before, "a generated split goes to the cache, not the dataset folder"
    saved = list((tmp_path / "cache" / "splits").rglob(SPLIT_FILES[name]))
    assert len(saved) == 1
    assert read_split_file(saved[0]) == (splits.train, splits.val, splits.test)

    per_label = {
        k: [sum(1 for s in splits.split(k) if s.label == y) for y in range(4)]
        for k in ("train", "val", "test")
    }
    everything = [s.path for k in ("train", "val", "test") for s in splits.split(k)]
    assert len(everything) == len(set(everything))
    if name in ("oxford_pets", "stanford_cars", "sun397", "ucf101"):
        # trainval (the fake puts the first ceil(2n/3) images there) split 80/20 per class
        trainval = [math.ceil(c * 2 / 3) for c in counts]
        assert per_label["val"] == [round(t * 0.2) for t in trainval]
        assert per_label["train"] == [t - round(t * 0.2) for t in trainval]
        assert per_label["test"] == [c - t for c, t in zip(counts, trainval)]
    else:  # 50/20/30 per class with Python's round
        assert per_label["train"] == [round(c * 0.5) for c in counts]
        assert per_label["val"] == [round(c * 0.2) for c in counts]
        assert per_label["test"] == [c - round(c * 0.5) - round(c * 0.2) for c in counts]
    # generated with a fixed seed: the same split every time
    again = build_dataset(name, tmp_path / "data", cache_dir=tmp_path / "cache2")
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)


def test_caltech_ignores_background_and_faces_easy(tmp_path: Path) -> None:
    make_fake_dataset("caltech101", tmp_path, n_classes=6, with_split=False)
    splits = build_dataset("caltech101", tmp_path, cache_dir=tmp_path / "cache")
    paths = [s.path for k in ("train", "val", "test") for s in splits.split(k)]
    assert not any(p.startswith(("BACKGROUND_Google/", "Faces_easy/")) for p in paths)
    assert splits.classnames == ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"]


def test_eurosat_all_ten_new_names(tmp_path: Path) -> None:
    make_fake_dataset("eurosat", tmp_path, n_classes=10, per_class=4)
    splits = build_dataset("eurosat", tmp_path, cache_dir=tmp_path / "cache")
    assert splits.classnames == [
        "Annual Crop Land",
        "Forest",
        "Herbaceous Vegetation Land",
        "Highway or Road",
        "Industrial Buildings",
        "Pasture Land",
        "Permanent Crop Land",
        "Residential Buildings",
        "River",
        "Sea or Lake",
    ]


def test_imagenet_a_uses_only_present_wnids(tmp_path: Path) -> None:
    dataset_dir = make_fake_dataset("imagenet_a", tmp_path, n_classes=3, per_class=2)
    assert len((dataset_dir / "classnames.txt").read_text().splitlines()) == 6  # all wnids listed
    splits = build_dataset("imagenet-a", tmp_path, cache_dir=tmp_path / "cache")
    assert splits.classnames == ["goldfish", "tiger shark", "electric ray"]
    assert sorted({s.label for s in splits.test}) == [0, 1, 2]
    with pytest.raises(ValueError, match="test-only"):
        build_dataset("imagenet_a", tmp_path, subsample="base", cache_dir=tmp_path / "cache")


def test_base_new_subsampling_on_a_reader(tmp_path: Path) -> None:
    make_fake_dataset("ucf101", tmp_path, n_classes=5)
    base = build_dataset("ucf101", tmp_path, subsample="base", cache_dir=tmp_path / "c")
    new = build_dataset("ucf101", tmp_path, subsample="new", cache_dir=tmp_path / "c")
    names = expected_classnames("ucf101", 5)
    assert base.classnames == names[:3] and new.classnames == names[3:]
    for splits in (base, new):
        for key in ("train", "val", "test"):
            assert {s.label for s in splits.split(key)} == set(range(splits.num_classes))


def test_names_and_aliases() -> None:
    assert list_datasets() == list(DATASETS)
    assert len(DATASETS) == 16 and list(DATASETS)[-1] == "mmprompt_demo"  # 15 benchmarks + the demo world
    for key in DATASETS:
        assert key == key.lower()
        assert get_dataset_info(key).key == key
    for alias, key in {
        "OxfordPets": "oxford_pets",
        "oxford-pets": "oxford_pets",
        "DescribableTextures": "dtd",
        "OxfordFlowers": "oxford_flowers",
        "Flowers102": "oxford_flowers",
        "FGVCAircraft": "fgvc_aircraft",
        "StanfordCars": "stanford_cars",
        "ImageNetV2": "imagenetv2",
        "ImageNetSketch": "imagenet_sketch",
        "imagenet-a": "imagenet_a",
        "ImageNetR": "imagenet_r",
        "caltech-101": "caltech101",
        "SUN397": "sun397",
    }.items():
        assert get_dataset_info(alias).key == key
    with pytest.raises(KeyError, match="known datasets"):
        get_dataset_info("mnist")
    assert [DATASETS[k].label for k in ("dtd", "oxford_flowers", "imagenet_a", "oxford_pets")] == [
        "DTD",
        "Flowers102",
        "ImageNet-A",
        "OxfordPets",
    ]


def test_templates_follow_the_spec() -> None:
    assert get_template("OxfordPets") == "a photo of a {}, a type of pet."
    assert get_template("dtd") == "{} texture."
    assert get_template("eurosat") == "a centered satellite photo of {}."
    assert get_template("food101") == "a photo of {}, a type of food."
    assert get_template("ucf101") == "a photo of a person doing {}."
    assert get_template("fgvc_aircraft") == "a photo of a {}, a type of aircraft."
    assert get_template("oxford_flowers") == "a photo of a {}, a type of flower."
    assert get_template("imagenet_r") == "a photo of a {}."
    assert get_template("custom") == "a photo of a {}."


@pytest.mark.parametrize(
    "bad", ["../outside.jpg", "/etc/passwd", "C:\\images\\a.jpg", "face/../../b.jpg", ""]
)
def test_split_path_escaping_the_dataset_is_rejected(tmp_path: Path, bad: str) -> None:
    dataset_dir = make_fake_dataset("caltech101", tmp_path)
    split_path = dataset_dir / "split_zhou_Caltech101.json"
    data = json.loads(split_path.read_text())
    data["train"][2][0] = bad
    split_path.write_text(json.dumps(data))
    with pytest.raises(SplitFileError) as err:
        build_dataset("caltech101", tmp_path, cache_dir=tmp_path / "cache")
    assert str(split_path) in str(err.value)
    assert "train[2]" in str(err.value)


def test_malformed_split_file_names_the_entry(tmp_path: Path) -> None:
    dataset_dir = make_fake_dataset("dtd", tmp_path)
    split_path = dataset_dir / "split_zhou_DescribableTextures.json"
    data = json.loads(split_path.read_text())
    data["val"][1] = ["banded/x.jpg", "zero"]
    split_path.write_text(json.dumps(data))
    with pytest.raises(SplitFileError, match=r"val\[1\]"):
        build_dataset("dtd", tmp_path, cache_dir=tmp_path / "cache")
    split_path.write_text("{not json")
    with pytest.raises(SplitFileError, match="not valid JSON"):
        build_dataset("dtd", tmp_path, cache_dir=tmp_path / "cache")


def test_wrong_root_error_suggests_the_parent(tmp_path: Path) -> None:
    dataset_dir = make_fake_dataset("caltech101", tmp_path / "data")
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("caltech101", dataset_dir, cache_dir=tmp_path / "cache")
    assert f"--data-root {tmp_path / 'data'}" in str(err.value)
