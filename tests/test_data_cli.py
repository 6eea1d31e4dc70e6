"""``mmprompt data inspect`` and ``mmprompt data check``, called through ``mmprompt.cli.main``."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fake_datasets import expected_classnames, make_fake_dataset
from mmprompt.cli import main
from mmprompt.data import build_dataset


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_json_structure(tmp_path: Path, capsys) -> None:
    make_fake_dataset("caltech101", tmp_path / "data", n_classes=5, per_class=[4, 12, 12, 3, 9])
    code, out, _ = run(capsys, "inspect", "--dataset", "Caltech101", "--data-root", tmp_path / "data", "--shots", 2,
                       "--seed", 2, "--subsample", "base", "--cache-dir", tmp_path / "cache", "--json")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"classnames", "train", "val", "test"}
    assert data["classnames"] == expected_classnames("caltech101", 5)[:3]
    for key in ("train", "val", "test"):
        for path, label in data[key]:
            assert path.startswith("101_ObjectCategories/")  # relative to the dataset folder
            assert (tmp_path / "data" / "caltech-101" / path).is_file()
            assert 0 <= label < 3
    assert max(Counter(label for _, label in data["train"]).values()) <= 2
    assert max(Counter(label for _, label in data["val"]).values()) <= 2  # min(2, 4)
    # the same as the library
    lib = build_dataset(
        "caltech101", tmp_path / "data", shots=2, seed=2, subsample="base", cache_dir=tmp_path / "c2"
    )
    assert data["train"] == [["101_ObjectCategories/" + s.path, s.label] for s in lib.train]


def test_inspect_summary_and_stanford_cars_paths(tmp_path: Path, capsys) -> None:
    make_fake_dataset("stanford_cars", tmp_path, n_classes=4)
    code, out, _ = run(
        capsys,
        "inspect",
        "--dataset",
        "stanford_cars",
        "--data-root",
        tmp_path,
        "--cache-dir",
        tmp_path / "c",
        "--json",
    )
    assert code == 0
    paths = [p for p, _ in json.loads(out)["train"]]
    assert all(p.startswith(("cars_train/", "cars_test/")) for p in paths)  # image folder = dataset folder
    code, out, _ = run(
        capsys,
        "inspect",
        "--dataset",
        "stanford_cars",
        "--data-root",
        tmp_path,
        "--cache-dir",
        tmp_path / "c",
        "--subsample",
        "new",
    )
    assert code == 0
    assert "classes      2: 2012 Tesla Model S Sedan, 2010 Dodge Ram Pickup 3500 Crew Cab" in out
    assert "split_zhou_StanfordCars.json" in out


def test_check_ok(tmp_path: Path, capsys) -> None:
    make_fake_dataset("oxford_pets", tmp_path, n_classes=3)
    code, out, _ = run(capsys, "check", "--dataset", "oxford_pets", "--data-root", tmp_path)
    assert code == 0
    assert "OK" in out
    assert "the official OxfordPets has 37" in out  # a fake has fewer classes: a note, not a problem


def test_check_missing_split_file(tmp_path: Path, capsys) -> None:
    dataset_dir = make_fake_dataset("caltech101", tmp_path, n_classes=3, with_split=False)
    code, out, _ = run(capsys, "check", "--dataset", "caltech101", "--data-root", tmp_path)
    assert code == 1
    assert f"{dataset_dir / 'split_zhou_Caltech101.json'} is missing" in out
    assert "Google Drive" in out and "CoOp's DATASETS.md" in out
    assert "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md" in out
    assert "differ from the paper" in out


def test_check_missing_split_and_annotations(tmp_path: Path, capsys) -> None:
    dataset_dir = make_fake_dataset("oxford_pets", tmp_path, n_classes=3, with_split=False)
    (dataset_dir / "annotations" / "test.txt").unlink()
    code, out, _ = run(capsys, "check", "--dataset", "OxfordPets", "--data-root", tmp_path)
    assert code == 1
    assert "a split cannot be generated either" in out
    assert str(dataset_dir / "annotations" / "test.txt") in out
    assert "https://www.robots.ox.ac.uk/~vgg/data/pets/" in out


def test_check_missing_image_folder(tmp_path: Path, capsys) -> None:
    dataset_dir = make_fake_dataset("caltech101", tmp_path, n_classes=3)
    shutil.rmtree(dataset_dir / "101_ObjectCategories")
    code, out, _ = run(capsys, "check", "--dataset", "caltech101", "--data-root", tmp_path)
    assert code == 1
    assert f"{dataset_dir / '101_ObjectCategories'} (the images, one folder per class) is missing" in out
    assert "101_ObjectCategories.tar.gz" in out


def test_check_missing_images(tmp_path: Path, capsys) -> None:
    dataset_dir = make_fake_dataset("dtd", tmp_path, n_classes=3)
    gone = dataset_dir / "images" / "blotchy" / "blotchy_0002.jpg"
    gone.unlink()
    code, out, _ = run(capsys, "check", "--dataset", "dtd", "--data-root", tmp_path)
    assert code == 1
    assert str(gone) in out and "1 of" in out


def test_check_wrong_root_points_at_the_dataset_folder(tmp_path: Path, capsys) -> None:
    dataset_dir = make_fake_dataset("eurosat", tmp_path / "data", n_classes=3)
    code, out, _ = run(capsys, "check", "--dataset", "eurosat", "--data-root", dataset_dir)
    assert code == 1
    assert "points at the EuroSAT folder itself" in out
    assert f"--data-root {tmp_path / 'data'}" in out
    # and pointing at the image folder
    code, out, _ = run(capsys, "check", "--dataset", "eurosat", "--data-root", dataset_dir / "2750")
    assert code == 1 and f"--data-root {tmp_path / 'data'}" in out


def test_check_misnamed_and_nested_folders(tmp_path: Path, capsys) -> None:
    make_fake_dataset("food101", tmp_path / "data", n_classes=2)
    (tmp_path / "data" / "food-101").rename(tmp_path / "data" / "Food101")
    code, out, _ = run(capsys, "check", "--dataset", "food101", "--data-root", tmp_path / "data")
    assert code == 1 and "must be named exactly 'food-101'" in out
    (tmp_path / "data" / "Food101").rename(tmp_path / "data" / "food-101")
    code, out, _ = run(capsys, "check", "--dataset", "food101", "--data-root", tmp_path)
    assert code == 1 and f"use --data-root {tmp_path / 'data'}" in out
    code, out, _ = run(capsys, "check", "--dataset", "food101", "--data-root", tmp_path / "nowhere")
    assert code == 1 and "does not exist" in out


def test_check_verify_images_finds_corrupt_file(tmp_path: Path, capsys) -> None:
    dataset_dir = make_fake_dataset("fgvc_aircraft", tmp_path, n_classes=2)
    bad = next((dataset_dir / "images").iterdir())
    bad.write_bytes(b"junk")
    assert run(capsys, "check", "--dataset", "fgvc_aircraft", "--data-root", tmp_path)[0] == 0
    code, out, _ = run(capsys, "check", "--dataset", "fgvc_aircraft", "--data-root", tmp_path, "--verify-images")
    assert code == 1 and str(bad) in out


def test_errors_are_reported_not_raised(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "inspect", "--dataset", "mnist", "--data-root", tmp_path)
    assert code == 2 and "unknown dataset 'mnist'" in err and "caltech101" in err  # usage error
    code, _, err = run(capsys, "inspect", "--dataset", "dtd", "--data-root", tmp_path)
    assert code == 3 and str(tmp_path / "dtd") in err and "Traceback" not in err  # data error


def test_list(capsys) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for folder in ("caltech-101", "imagenet-rendition", "split_zhou_DescribableTextures.json", "{} texture."):
        assert folder in out


@pytest.mark.parametrize("shots", [1, 3])
def test_inspect_imagenet_val_is_test(tmp_path: Path, capsys, shots: int) -> None:
    make_fake_dataset("imagenet", tmp_path, n_classes=3, per_class=8)
    code, out, _ = run(capsys, "inspect", "--dataset", "imagenet", "--data-root", tmp_path, "--shots", shots,
                       "--cache-dir", tmp_path / "c", "--json")  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["val"] == data["test"]
    assert len(data["train"]) == 3 * shots
    assert len(data["test"]) == 3 * (8 - math.ceil(8 / 2))
    assert all(p.startswith("images/val/") for p, _ in data["test"])


def test_check_detects_a_renamed_dataset_folder_given_as_root(tmp_path: Path, capsys) -> None:
    make_fake_dataset("oxford_pets", tmp_path / "data", n_classes=2)
    (tmp_path / "data" / "oxford_pets").rename(tmp_path / "data" / "my pets")
    code, out, _ = run(capsys, "check", "--dataset", "oxford_pets", "--data-root", tmp_path / "data" / "my pets")
    assert code == 1 and f"use --data-root {tmp_path / 'data'}" in out
    # a data root that merely has some generic "images" folder is not mistaken for a dataset folder
    (tmp_path / "other" / "images").mkdir(parents=True)
    code, out, _ = run(capsys, "check", "--dataset", "oxford_pets", "--data-root", tmp_path / "other")
    assert code == 1 and "points at" not in out and "robots.ox.ac.uk" in out


def test_data_root_is_the_one_spelling_and_root_a_deprecated_alias(tmp_path: Path, capsys) -> None:
    """``--data-root`` as in every other command; the old ``--root`` still works with one warning line."""
    make_fake_dataset("caltech101", tmp_path / "data", n_classes=3, per_class=[4, 4, 4])
    new = run(capsys, "inspect", "--dataset", "caltech101", "--data-root", tmp_path / "data", "--json")
    old = run(capsys, "inspect", "--dataset", "caltech101", "--root", tmp_path / "data", "--json")
    assert new[0] == old[0] == 0 and new[1] == old[1]
    assert "deprecated" not in new[2]
    assert [line for line in old[2].splitlines() if line.strip()] == [
        "mmprompt data inspect: warning: --root is deprecated, use --data-root"]
    code, _, err = run(capsys, "check", "--dataset", "caltech101")
    assert code == 2 and err.strip().splitlines()[0] == (
        "mmprompt data: error (command line): data check needs --data-root DIR (the folder holding the datasets)")
