"""catalog.yaml: every dataset declared is readable and resolvable; a malformed catalogue is refused."""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

import pytest
import yaml

from mmprompt.data import DATASETS, get_dataset_info, list_datasets, resolve_name
from mmprompt.data.datasets.catalog import CATALOG_FILE, CatalogError, load_catalog
from mmprompt.data.datasets.readers import READERS
from mmprompt.data.errors import DatasetNotFoundError

# CoOp's order of the 11 datasets of the paper's tables, then the 4 ImageNet variants, then the demo
PAPER_ORDER = [
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
    "mmprompt_demo",
]  # fmt: skip

GOOD_ENTRY = {
    "key": "toy",
    "coop_name": "Toy",
    "folder": "toy",
    "image_subdir": "images",
    "num_classes": 3,
    "download": "Get the toy set from the toy shop.",
    "requirements": [{"path": "images", "kind": "dir", "what": "the images"}],
    "reader": {"name": "wnid_test_folders", "images": "images"},
}


def write_catalog(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": list(entries)}, sort_keys=False), encoding="utf-8")
    return path


def test_packaged_catalog_is_package_data_and_lists_the_datasets_in_paper_order() -> None:
    assert resources.files("mmprompt.data.datasets").joinpath(CATALOG_FILE).is_file()
    assert list_datasets() == PAPER_ORDER
    assert list(load_catalog()) == PAPER_ORDER


def test_every_entry_names_a_known_reader_and_every_name_resolves() -> None:
    raw = yaml.safe_load(resources.files("mmprompt.data.datasets").joinpath(CATALOG_FILE).read_text("utf-8"))
    for entry in raw["datasets"]:
        assert entry["reader"]["name"] in READERS, entry["key"]
    for key, info in DATASETS.items():
        for name in (key, info.coop_name, info.folder, *info.aliases, key.upper().replace("_", "-")):
            assert resolve_name(name) == key
        assert get_dataset_info(info.coop_name) is info
        assert callable(info.reader)


def test_a_missing_file_error_names_the_file_and_the_catalogued_download_text(tmp_path: Path) -> None:
    info = load_catalog(write_catalog(tmp_path, GOOD_ENTRY))["toy"]
    (tmp_path / "toy").mkdir()
    with pytest.raises(DatasetNotFoundError) as e:
        info.reader(tmp_path / "toy", random.Random(0))
    assert str(tmp_path / "toy" / "classnames.txt") in str(e.value)
    assert "Get the toy set from the toy shop." in str(e.value)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"reader": {"name": "no_such_reader"}},
            ["field 'reader'", "unknown reader 'no_such_reader'", "class_folders"],
        ),
        ({"num_classes": None}, ["field 'num_classes'", "expected an integer"]),
        ({"num_classes": "3"}, ["field 'num_classes'", "expected an integer"]),
        ({"num_classes": 0}, ["field 'num_classes'", "expected a positive integer"]),
        ({"split_file": 3}, ["field 'split_file'", "expected a string"]),
        ({"num_classes": True}, ["field 'num_classes'"]),
        ({"aliases": "toy2"}, ["field 'aliases'", "list of strings"]),
        ({"aliases": ["toy2", 3]}, ["field 'aliases'", "list of strings"]),
        ({"test_only": "yes"}, ["field 'test_only'", "true or false"]),
        ({"colour": "red"}, ["unknown field(s) ['colour']"]),
        ({"reader": {"name": "wnid_test_folders"}}, ["field 'reader'", "do not fit", "images"]),
        ({"reader": {"name": "wnid_test_folders", "images": "i", "size": 3}}, ["field 'reader'", "size"]),
        (
            {"reader": {"name": "class_folders", "images": "i", "ignored": "x"}},
            ["'ignored'", "list of strings"],
        ),
        ({"reader": {"name": "class_folders", "images": 2750}}, ["'images'", "expected a string"]),
        (
            {"requirements": [{"path": "images", "kind": "folder", "what": "x"}]},
            ["'requirements', item 1", "'kind'"],
        ),
        (
            {"requirements": [{"path": "images", "what": "x"}]},
            ["'requirements', item 1", "missing field 'kind'"],
        ),
        ({"requirements": [{"path": "x", "kind": "dir", "what": "x", "needed": "never"}]}, ["'needed'"]),
    ],
)
def test_a_bad_field_is_refused_naming_the_file_the_dataset_and_the_field(
    tmp_path: Path, change: dict, words: list[str]
) -> None:
    path = write_catalog(tmp_path, {**GOOD_ENTRY, **change})
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    for expected in [str(path), "dataset 'toy'", *words]:
        assert expected in str(e.value)


@pytest.mark.parametrize(
    "field", ["key", "coop_name", "folder", "image_subdir", "num_classes", "download", "reader"]
)
def test_a_missing_required_field_is_refused(tmp_path: Path, field: str) -> None:
    entry = {k: v for k, v in GOOD_ENTRY.items() if k != field}
    path = write_catalog(tmp_path, entry)
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    where = "dataset #1" if field == "key" else "dataset 'toy'"
    for expected in (str(path), where, f"missing field {field!r}"):
        assert expected in str(e.value)


def test_a_duplicate_key_and_a_malformed_file_are_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, GOOD_ENTRY, GOOD_ENTRY)
    with pytest.raises(CatalogError, match="'toy' is declared twice"):
        load_catalog(path)
    path.write_text("datasets: [unclosed\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)
    path.write_text("- key: toy\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="top-level 'datasets:' list"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")


def test_optional_fields_take_the_dataclass_defaults(tmp_path: Path) -> None:
    info = load_catalog(write_catalog(tmp_path, GOOD_ENTRY))["toy"]
    assert (info.split_file, info.aliases, info.val_is_test, info.test_only, info.display_name) == (
        None, (), False, False, ""
    )  # fmt: skip
    assert info.label == "Toy"
    assert info.requirements[0].needed == "always"
