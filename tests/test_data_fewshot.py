"""Few-shot sampling and base/novel subsampling equal the official Dassl/CoOp code, bit for bit."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_datasets import make_fake_dataset
from mmprompt.data import Sample, build_dataset, fewshot_cache_path, sample_fewshot
from mmprompt.data import subsample_classes as lib_subsample_classes

# ----------------------------------------------------------------------------------------------------------
# A literal re-statement of the official code (dassl/data/datasets/base_dataset.py and CoOp's
# OxfordPets.subsample_classes / dataset __init__), on plain objects and the global `random` module.


class Datum:
    def __init__(self, impath="", label=0, domain=0, classname=""):
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

    @property
    def classname(self):
        return self._classname


def split_dataset_by_label(data_source):
    output = defaultdict(list)
    for item in data_source:
        output[item.label].append(item)
    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=False):
    if num_shots < 1:
        if len(data_sources) == 1:
            return data_sources[0]
        return data_sources
    output = []
    for data_source in data_sources:
        tracker = split_dataset_by_label(data_source)
        dataset = []
        for label, items in tracker.items():  # noqa: B007 (verbatim Dassl)
            if len(items) >= num_shots:
                sampled_items = random.sample(items, num_shots)
            else:
                if repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
            dataset.extend(sampled_items)
        output.append(dataset)
    if len(output) == 1:
        return output[0]
    return output


def subsample_classes(*args, subsample="all"):
    assert subsample in ["all", "base", "new"]
    if subsample == "all":
        return args
    dataset = args[0]
    labels = set()
    for item in dataset:
        labels.add(item.label)
    labels = list(labels)
    labels.sort()
    n = len(labels)
    m = math.ceil(n / 2)
    if subsample == "base":
        selected = labels[:m]
    else:
        selected = labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    output = []
    for dataset in args:
        dataset_new = []
        for item in dataset:
            if item.label not in selected:
                continue
            item_new = Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
            dataset_new.append(item_new)
        output.append(dataset_new)
    return output


def official(split: dict, num_shots: int, seed: int, subsample: str):
    """What CoOp/MaPLe's dataset __init__ does after reading the split (seed set once at start-up)."""
    train, val, test = ([Datum(p, y, 0, c) for p, y, c in split[k]] for k in ("train", "val", "test"))
    random.seed(seed)
    if num_shots >= 1:
        train = generate_fewshot_dataset(train, num_shots=num_shots)
        val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    return [[(d.impath, d.label, d.classname) for d in s] for s in (train, val, test)]


# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def shuffled_caltech(tmp_path: Path) -> tuple[Path, dict]:
    """A fake Caltech101 whose split lists are shuffled (labels first appear out of order) with uneven classes."""
    dataset_dir = make_fake_dataset("caltech101", tmp_path / "data", n_classes=5, per_class=[3, 9, 14, 5, 20])
    split_path = dataset_dir / "split_zhou_Caltech101.json"
    split = json.loads(split_path.read_text())
    rng = random.Random(1234)
    for key in split:
        rng.shuffle(split[key])
    assert [e[1] for e in split["train"][:5]] != sorted(e[1] for e in split["train"][:5])
    split_path.write_text(json.dumps(split))
    return tmp_path / "data", split


@pytest.fixture(autouse=True)
def _keep_global_random_state():
    state = random.getstate()
    yield
    random.setstate(state)


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("subsample", ["all", "base", "new"])
def test_fewshot_and_subsample_equal_official(
    shuffled_caltech, tmp_path: Path, seed, shots, subsample
) -> None:
    root, split = shuffled_caltech
    splits = build_dataset(
        "caltech101", root, shots=shots, seed=seed, subsample=subsample, cache_dir=tmp_path / "cache"
    )
    expected = official(split, shots, seed, subsample)
    got = [[(s.path, s.label, s.classname) for s in splits.split(k)] for k in ("train", "val", "test")]
    assert got == expected
    # the classes with fewer items than `shots` keep them all; sanity on the counts themselves
    per_label = defaultdict(int)
    for s in splits.train:
        per_label[s.label] += 1
    assert all(v <= max(shots, 1) for v in per_label.values())


def test_all_shots_keep_everything(shuffled_caltech, tmp_path: Path) -> None:
    root, split = shuffled_caltech
    for shots in (0, -1):
        splits = build_dataset("caltech101", root, shots=shots, seed=1, cache_dir=tmp_path / "cache")
        assert [[s.path, s.label, s.classname] for s in splits.train] == split["train"]
        assert [[s.path, s.label, s.classname] for s in splits.val] == split["val"]
    assert not (tmp_path / "cache" / "fewshot").exists()


def test_library_does_not_touch_global_random(shuffled_caltech, tmp_path: Path) -> None:
    root, _ = shuffled_caltech
    random.seed(99)
    expected = random.random()
    random.seed(99)
    build_dataset("caltech101", root, shots=4, seed=1, cache_dir=tmp_path / "cache")
    assert random.random() == expected


def test_imagenet_samples_train_only_and_val_is_test(tmp_path: Path) -> None:
    make_fake_dataset("imagenet", tmp_path, n_classes=4, per_class=[6, 9, 4, 12])
    full = build_dataset("imagenet", tmp_path, cache_dir=tmp_path / "cache")
    splits = build_dataset(
        "imagenet", tmp_path, shots=2, seed=3, subsample="base", cache_dir=tmp_path / "cache"
    )
    # the official ImageNet: random.seed(seed); train only; then subsample (train, test); val = test
    random.seed(3)
    train = generate_fewshot_dataset(
        [Datum(s.path, s.label, 0, s.classname) for s in full.train], num_shots=2
    )
    test = [Datum(s.path, s.label, 0, s.classname) for s in full.test]
    train, test = subsample_classes(train, test, subsample="base")
    assert [(s.path, s.label) for s in splits.train] == [(d.impath, d.label) for d in train]
    assert [(s.path, s.label) for s in splits.test] == [(d.impath, d.label) for d in test]
    assert splits.val == splits.test


def test_cache_is_written_outside_the_dataset_and_reused(
    shuffled_caltech, tmp_path: Path, monkeypatch
) -> None:
    root, _ = shuffled_caltech
    monkeypatch.setenv("MMPROMPT_CACHE", str(tmp_path / "envcache"))
    first = build_dataset("caltech101", root, shots=2, seed=5)
    [path] = (tmp_path / "envcache" / "fewshot" / "caltech101").glob("split-*/shot_2-seed_5.json")
    key = path.parent.name.removeprefix("split-")
    assert path.is_file() and fewshot_cache_path(None, "caltech101", 2, 5, key) == path
    assert not (root / "caltech-101" / "split_fewshot").exists()
    cached = json.loads(path.read_text())
    assert cached["train"] == [[s.path, s.label, s.classname] for s in first.train]

    # the cache is what is read back: edit it (same split) and the edit shows
    cached["train"] = cached["train"][:3]
    path.write_text(json.dumps(cached))
    assert len(build_dataset("caltech101", root, shots=2, seed=5).train) == 3

    # a cache made from another split is ignored and rewritten
    cached["fingerprint"] = "0" * 16
    path.write_text(json.dumps(cached))
    assert build_dataset("caltech101", root, shots=2, seed=5).train == first.train


def test_sample_fewshot_matches_global_random_on_plain_items() -> None:
    items = [Datum(f"p{i}", label=(i * 7) % 5, classname=str((i * 7) % 5)) for i in range(40)]
    val = [Datum(f"v{i}", label=i % 5, classname=str(i % 5)) for i in range(17)]
    for seed in (1, 2, 3):
        got_train, got_val = sample_fewshot(items, val, 3, seed)
        random.seed(seed)
        exp_train = generate_fewshot_dataset(items, num_shots=3)
        exp_val = generate_fewshot_dataset(val, num_shots=3)
        assert got_train == exp_train and got_val == exp_val


@settings(max_examples=60, deadline=None)
@given(
    train_labels=st.lists(st.integers(0, 7), max_size=60),
    val_labels=st.lists(st.integers(0, 7), max_size=20),
    shots=st.integers(-1, 9),
    seed=st.integers(0, 2**31),
    subsample=st.sampled_from(["all", "base", "new"]),
)
def test_property_equal_to_official(train_labels, val_labels, shots, seed, subsample) -> None:
    """Any label pattern: library (few-shot then subsample) == the literal official code."""
    state = random.getstate()
    try:
        split = {
            "train": [[f"t{i}.jpg", y, f"c{y}"] for i, y in enumerate(train_labels)],
            "val": [[f"v{i}.jpg", y, f"c{y}"] for i, y in enumerate(val_labels)],
            "test": [[f"s{i}.jpg", y, f"c{y}"] for i, y in enumerate(sorted(set(train_labels)))],
        }
        expected = official(split, shots, seed, subsample)
    finally:
        random.setstate(state)
    train, val, test = ([Sample(*e) for e in split[k]] for k in ("train", "val", "test"))
    train, val = sample_fewshot(train, val, shots, seed)
    got = lib_subsample_classes(train, val, test, subsample=subsample)
    assert [[(s.path, s.label, s.classname) for s in part] for part in got] == expected


def test_two_split_files_keep_their_own_few_shot_selections(tmp_path: Path, caplog) -> None:
    """The cache is keyed by the split sampled from: switching between two split files reuses both caches
    instead of sampling again each time."""
    import logging

    from mmprompt.data import select_fewshot

    def split(prefix: str) -> list[Sample]:
        return [Sample(f"{prefix}/{c}/{i}.jpg", c, f"class{c}") for c in range(3) for i in range(6)]

    cache = tmp_path / "cache"
    first = select_fewshot("custom_x", None, split("a"), None, 2, 1, cache_dir=cache)
    second = select_fewshot("custom_x", None, split("b"), None, 2, 1, cache_dir=cache)
    assert len(list((cache / "fewshot" / "custom_x").glob("split-*/shot_2-seed_1.json"))) == 2
    with caplog.at_level(logging.INFO, logger="mmprompt.data.fewshot"):
        again_first = select_fewshot("custom_x", None, split("a"), None, 2, 1, cache_dir=cache)
        again_second = select_fewshot("custom_x", None, split("b"), None, 2, 1, cache_dir=cache)
    assert again_first[2].startswith("cache ") and again_second[2].startswith("cache ")
    assert again_first[0] == first[0] and again_second[0] == second[0]
    assert "sampling again" not in caplog.text
