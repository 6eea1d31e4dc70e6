"""Tiny fake copies of the benchmark datasets in their official on-disk layouts (CoOp's DATASETS.md).

    from fake_datasets import make_fake_dataset, expected_classnames
    dataset_dir = make_fake_dataset("caltech101", tmp_path, n_classes=4, per_class=6)

Each class's raw name (folder, annotation, .mat entry...) and the class name the official code derives
from it are written out literally in the tables below, so tests compare the library against them
rather than against a re-implementation. Images are tiny solid-colour JPEGs (or PNGs).

``with_split=True`` also writes ``split_zhou_<Name>.json`` for the datasets that have one, assigning
each class's images in file order: the first ``ceil(n/2)`` to train, the next ``max(1, n//5)`` to val,
the rest to test (the official files' own assignment is random; this one is easy to predict).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

# raw name -> the official class name, in the official label order
IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"),
]
TABLES: dict[str, list[tuple[str, str]]] = {
    "imagenet": IMAGENET_CLASSES,
    "imagenetv2": IMAGENET_CLASSES,
    "imagenet_sketch": IMAGENET_CLASSES,
    # ImageNet-A/-R: only some wnids have a folder (every other one, see _wnid_subset)
    "imagenet_a": IMAGENET_CLASSES,
    "imagenet_r": IMAGENET_CLASSES,
    "caltech101": [  # sorted folder order (upper case first); BACKGROUND_Google and Faces_easy are ignored
        ("Faces", "face"),
        ("Leopards", "leopard"),
        ("Motorbikes", "motorbike"),
        ("accordion", "accordion"),
        ("airplanes", "airplane"),
        ("anchor", "anchor"),
    ],
    "oxford_pets": [  # file-name prefix (class id = position + 1) -> lower-cased breed
        ("Abyssinian", "abyssinian"),
        ("american_bulldog", "american_bulldog"),
        ("Bengal", "bengal"),
        ("german_shorthaired", "german_shorthaired"),
        ("Siamese", "siamese"),
    ],
    "stanford_cars": [  # cars_meta.mat name -> year first
        ("AM General Hummer SUV 2000", "2000 AM General Hummer SUV"),
        ("Acura RL Sedan 2012", "2012 Acura RL Sedan"),
        ("Tesla Model S Sedan 2012", "2012 Tesla Model S Sedan"),
        ("Dodge Ram Pickup 3500 Crew Cab 2010", "2010 Dodge Ram Pickup 3500 Crew Cab"),
        ("smart fortwo Convertible 2012", "2012 smart fortwo Convertible"),
    ],
    "oxford_flowers": [  # cat_to_name.json key -> name
        ("1", "pink primrose"),
        ("2", "hard-leaved pocket orchid"),
        ("3", "canterbury bells"),
        ("4", "sweet pea"),
        ("5", "english marigold"),
    ],
    "food101": [(n, n) for n in ("apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare")],
    "fgvc_aircraft": [(n, n) for n in ("707-320", "727-200", "A300B4", "F-16A/B", "Tu-134", "Cessna 172")],
    "sun397": [  # ClassName.txt entry -> pieces after the letter folder, reversed
        ("/a/abbey", "abbey"),
        ("/a/apartment_building/outdoor", "outdoor apartment_building"),
        ("/b/bus_interior", "bus_interior"),
        ("/c/church/indoor", "indoor church"),
        ("/d/dining_room", "dining_room"),
    ],
    "dtd": [(n, n) for n in ("banded", "blotchy", "braided", "bubbly", "bumpy")],
    "eurosat": [
        ("AnnualCrop", "Annual Crop Land"),
        ("Forest", "Forest"),
        ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
        ("Highway", "Highway or Road"),
        ("Industrial", "Industrial Buildings"),
        ("Pasture", "Pasture Land"),
        ("PermanentCrop", "Permanent Crop Land"),
        ("Residential", "Residential Buildings"),
        ("River", "River"),
        ("SeaLake", "Sea or Lake"),
    ],
    "ucf101": [  # classInd.txt action -> CamelCase split with "_"
        ("ApplyEyeMakeup", "Apply_Eye_Makeup"),
        ("Archery", "Archery"),
        ("BabyCrawling", "Baby_Crawling"),
        ("PlayingDaf", "Playing_Daf"),
        ("YoYo", "Yo_Yo"),
    ],
}
FOLDERS = {
    "imagenet": "imagenet",
    "caltech101": "caltech-101",
    "oxford_pets": "oxford_pets",
    "stanford_cars": "stanford_cars",
    "oxford_flowers": "oxford_flowers",
    "food101": "food-101",
    "fgvc_aircraft": "fgvc_aircraft",
    "sun397": "sun397",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "ucf101": "ucf101",
    "imagenetv2": "imagenetv2",
    "imagenet_sketch": "imagenet-sketch",
    "imagenet_a": "imagenet-adversarial",
    "imagenet_r": "imagenet-rendition",
}
SPLIT_FILES = {
    "caltech101": "split_zhou_Caltech101.json",
    "oxford_pets": "split_zhou_OxfordPets.json",
    "stanford_cars": "split_zhou_StanfordCars.json",
    "oxford_flowers": "split_zhou_OxfordFlowers.json",
    "food101": "split_zhou_Food101.json",
    "sun397": "split_zhou_SUN397.json",
    "dtd": "split_zhou_DescribableTextures.json",
    "eurosat": "split_zhou_EuroSAT.json",
    "ucf101": "split_zhou_UCF101.json",
}
FAKE_DATASETS: tuple[str, ...] = tuple(FOLDERS)
DEFAULT_N_CLASSES = 4


def _n_classes(name: str, n_classes: int | None) -> int:
    n = DEFAULT_N_CLASSES if n_classes is None else n_classes
    if not 1 <= n <= len(TABLES[name]):
        raise ValueError(f"{name}: n_classes must be between 1 and {len(TABLES[name])}")
    return n


def _wnid_subset(name: str, n: int) -> list[tuple[str, str]]:
    """The classes that get a folder: ImageNet-A/-R have folders for only some wnids of classnames.txt."""
    table = TABLES[name]
    if name in ("imagenet_a", "imagenet_r"):
        return table[1::2][:n] if n <= len(table[1::2]) else table[:n]
    return table[:n]


def expected_classnames(name: str, n_classes: int | None = None) -> list[str]:
    """The class names the official code gives the fake dataset, in label order."""
    n = _n_classes(name, n_classes)
    return [official for _, official in _wnid_subset(name, n)]


def _counts(per_class: int | Sequence[int], n: int) -> list[int]:
    counts = [per_class] * n if isinstance(per_class, int) else list(per_class)
    if len(counts) != n:
        raise ValueError(f"per_class has {len(counts)} entries for {n} classes")
    return counts


def _image(path: Path, index: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((index * 53) % 256, (index * 97) % 256, (index * 151) % 256)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", (size, size), colour).save(path, fmt)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def fake_split(per_class_items: list[list[tuple[str, int, str]]]) -> dict[str, list[list]]:
    """The fake split: per class, first ceil(n/2) train, next max(1, n//5) val, the rest test."""
    split: dict[str, list[list]] = {"train": [], "val": [], "test": []}
    for items in per_class_items:
        n_train = math.ceil(len(items) / 2)
        n_val = max(1, len(items) // 5)
        split["train"] += [list(x) for x in items[:n_train]]
        split["val"] += [list(x) for x in items[n_train : n_train + n_val]]
        split["test"] += [list(x) for x in items[n_train + n_val :]]
    return split


def make_fake_dataset(
    name: str,
    root: str | Path,
    n_classes: int | None = None,
    per_class: int | Sequence[int] = 6,
    image_size: int = 8,
    with_split: bool = True,
) -> Path:
    """Write a fake ``name`` dataset under ``root`` in the official layout; returns its dataset folder.

    ``per_class`` is the number of images of each class (an int, or one count per class); it must be
    at least 4 for a 50/20/30 split to be possible, and at least 3 for splits written here.
    """
    if name not in FOLDERS:
        raise KeyError(f"no fake for {name!r}; choose from {', '.join(FOLDERS)}")
    n = _n_classes(name, n_classes)
    counts = _counts(per_class, n)
    dataset_dir = Path(root) / FOLDERS[name]
    dataset_dir.mkdir(parents=True, exist_ok=True)
    per_class_items = _BUILDERS[name](dataset_dir, n, counts, image_size)
    if with_split and name in SPLIT_FILES:
        _write(dataset_dir / SPLIT_FILES[name], json.dumps(fake_split(per_class_items), indent=4))
    return dataset_dir


# ----------------------------------------------------------------------------------------------------------
# builders: write the files, return per class the (path relative to the image folder, label, name) items


def _folder_per_class(
    image_dir: Path, classes: list[tuple[str, str]], counts: list[int], size: int, stem=None
):
    out = []
    for label, ((folder, official), count) in enumerate(zip(classes, counts)):
        items = []
        for i in range(count):
            fname = f"{stem(folder) if stem else 'image'}_{i + 1:04d}.jpg"
            _image(image_dir / folder / fname, label * 100 + i, size)
            items.append((f"{folder}/{fname}", label, official))
        out.append(items)
    return out


def _imagenet(d: Path, n: int, counts: list[int], size: int):
    classes = TABLES["imagenet"][:n]
    _write(d / "classnames.txt", "".join(f"{w} {c}\n" for w, c in TABLES["imagenet"]))
    out = []
    for label, ((wnid, official), count) in enumerate(zip(classes, counts)):
        items = []
        for i in range(count):
            split = "train" if i < math.ceil(count / 2) else "val"
            fname = f"{wnid}_{i + 1}.JPEG"
            _image(d / "images" / split / wnid / fname, label * 100 + i, size)
            items.append((f"{split}/{wnid}/{fname}", label, official))
        out.append(items)
    return out


def _imagenetv2(d: Path, n: int, counts: list[int], size: int):
    _write(d / "classnames.txt", "".join(f"{w} {c}\n" for w, c in TABLES["imagenetv2"][:n]))
    image_dir = d / "imagenetv2-matched-frequency-format-val"
    out = []
    for label, ((_, official), count) in enumerate(zip(TABLES["imagenetv2"][:n], counts)):
        items = []
        for i in range(count):
            _image(image_dir / str(label) / f"{label:03d}{i:05x}.jpeg", label * 100 + i, size)
            items.append((f"{label}/{label:03d}{i:05x}.jpeg", label, official))
        out.append(items)
    return out


def _wnid_variant(subdir: str, name: str, readme: bool = False):
    def build(d: Path, n: int, counts: list[int], size: int):
        _write(d / "classnames.txt", "".join(f"{w} {c}\n" for w, c in TABLES[name]))
        if readme:
            _write(d / subdir / "README.txt", "fake\n")
        return _folder_per_class(d / subdir, _wnid_subset(name, n), counts, size)

    return build


def _caltech(d: Path, n: int, counts: list[int], size: int):
    image_dir = d / "101_ObjectCategories"
    for j, ignored in enumerate(("BACKGROUND_Google", "Faces_easy")):
        for i in range(3):
            _image(image_dir / ignored / f"image_{i + 1:04d}.jpg", 900 + j * 10 + i, size)
    return _folder_per_class(image_dir, TABLES["caltech101"][:n], counts, size)


def _pets(d: Path, n: int, counts: list[int], size: int):
    out, trainval, test = [], [], []
    for label, ((prefix, official), count) in enumerate(zip(TABLES["oxford_pets"][:n], counts)):
        species = 1 if prefix[0].isupper() else 2  # cats are capitalised in the official files
        items = []
        for i in range(count):
            _image(d / "images" / f"{prefix}_{i + 1}.jpg", label * 100 + i, size)
            items.append((f"{prefix}_{i + 1}.jpg", label, official))
            line = f"{prefix}_{i + 1} {label + 1} {species} {label + 1}\n"
            (trainval if i < math.ceil(count * 2 / 3) else test).append(line)
        out.append(items)
    _write(d / "annotations" / "trainval.txt", "".join(trainval))
    _write(d / "annotations" / "test.txt", "".join(test))
    return out


def _cars(d: Path, n: int, counts: list[int], size: int):
    import numpy as np

    out, annos = [], {"cars_train": [], "cars_test": []}
    for label, ((_, official), count) in enumerate(zip(TABLES["stanford_cars"][:n], counts)):
        items = []
        for i in range(count):
            folder = "cars_train" if i < math.ceil(count * 2 / 3) else "cars_test"
            fname = f"{len(annos[folder]) + 1:05d}.jpg"
            _image(d / folder / fname, label * 100 + i, size)
            annos[folder].append((fname, label + 1))
            items.append((f"{folder}/{fname}", label, official))
        out.append(items)
    try:
        from scipy.io import savemat
    except ImportError:  # the split file alone is enough to read the dataset
        return out
    names = np.empty((1, n), dtype=object)
    names[0, :] = [raw for raw, _ in TABLES["stanford_cars"][:n]]
    (d / "devkit").mkdir(exist_ok=True)
    savemat(str(d / "devkit" / "cars_meta.mat"), {"class_names": names})
    for folder, target in (
        ("cars_train", d / "devkit" / "cars_train_annos.mat"),
        ("cars_test", d / "cars_test_annos_withlabels.mat"),
    ):
        rows = np.zeros((1, len(annos[folder])), dtype=[("class", "O"), ("fname", "O")])
        for i, (fname, cls) in enumerate(annos[folder]):
            rows[0, i] = (np.array([[cls]], dtype=np.uint8), np.array([fname]))
        savemat(str(target), {"annotations": rows})
    return out


def _flowers(d: Path, n: int, counts: list[int], size: int):
    import numpy as np

    # interleave the classes (label of image k = k-th entry), as in the official imagelabels.mat
    order = [label for i in range(max(counts)) for label in range(n) if i < counts[label]]
    out: list[list] = [[] for _ in range(n)]
    for k, label in enumerate(order):
        fname = f"image_{k + 1:05d}.jpg"
        _image(d / "jpg" / fname, k, size)
        out[label].append((fname, label, TABLES["oxford_flowers"][label][1]))
    _write(d / "cat_to_name.json", json.dumps(dict(TABLES["oxford_flowers"])))
    try:
        from scipy.io import savemat
    except ImportError:
        return out
    savemat(
        str(d / "imagelabels.mat"), {"labels": np.array([[label + 1 for label in order]], dtype=np.uint8)}
    )
    return out


def _aircraft(d: Path, n: int, counts: list[int], size: int):
    variants = [v for v, _ in TABLES["fgvc_aircraft"]]
    _write(d / "variants.txt", "".join(f"{v}\n" for v in variants))
    out, lists = [], {"train": [], "val": [], "test": []}
    image_id = 1000000
    for label, (variant, count) in enumerate(zip(variants[:n], counts)):
        items = []
        for i in range(count):
            image_id += 1
            _image(d / "images" / f"{image_id}.jpg", image_id, size)
            split = (
                "train"
                if i < math.ceil(count / 2)
                else ("val" if i < math.ceil(count / 2) + max(1, count // 5) else "test")
            )
            lists[split].append(f"{image_id} {variant}\n")
            items.append((f"{image_id}.jpg", label, variant))
        out.append(items)
    for split, lines in lists.items():
        _write(d / f"images_variant_{split}.txt", "".join(lines))
    return out


def _sun397(d: Path, n: int, counts: list[int], size: int):
    classes = TABLES["sun397"][:n]
    _write(d / "ClassName.txt", "".join(f"{c}\n" for c, _ in classes))
    out, training, testing = [], [], []
    for label, ((cname, official), count) in enumerate(zip(classes, counts)):
        items = []
        for i in range(count):
            rel = f"{cname[1:]}/sun_{label}{i:04d}.jpg"
            _image(d / "SUN397" / rel, label * 100 + i, size)
            (training if i < math.ceil(count * 2 / 3) else testing).append(f"/{rel}\n")
            items.append((rel, label, official))
        out.append(items)
    _write(d / "Training_01.txt", "".join(training))
    _write(d / "Testing_01.txt", "".join(testing))
    return out


def _ucf101(d: Path, n: int, counts: list[int], size: int):
    classes = TABLES["ucf101"][:n]
    lists = d / "ucfTrainTestlist"
    _write(lists / "classInd.txt", "".join(f"{i + 1} {a}\n" for i, (a, _) in enumerate(classes)))
    out, train, test = [], [], []
    for label, ((action, official), count) in enumerate(zip(classes, counts)):
        items = []
        for i in range(count):
            video = f"v_{action}_g{i + 1:02d}_c01"
            _image(d / "UCF-101-midframes" / official / f"{video}.jpg", label * 100 + i, size)
            if i < math.ceil(count * 2 / 3):
                train.append(f"{action}/{video}.avi {label + 1}\n")
            else:
                test.append(f"{action}/{video}.avi\n")
            items.append((f"{official}/{video}.jpg", label, official))
        out.append(items)
    _write(lists / "trainlist01.txt", "".join(train))
    _write(lists / "testlist01.txt", "".join(test))
    return out


def _folders(name: str, subdir: str, stem=None):
    return lambda d, n, counts, size: _folder_per_class(d / subdir, TABLES[name][:n], counts, size, stem)


_BUILDERS = {
    "imagenet": _imagenet,
    "caltech101": _caltech,
    "oxford_pets": _pets,
    "stanford_cars": _cars,
    "oxford_flowers": _flowers,
    "food101": _folders("food101", "images", stem=lambda f: "img"),
    "fgvc_aircraft": _aircraft,
    "sun397": _sun397,
    "dtd": _folders("dtd", "images", stem=lambda f: f),
    "eurosat": _folders("eurosat", "2750", stem=lambda f: f),
    "ucf101": _ucf101,
    "imagenetv2": _imagenetv2,
    "imagenet_sketch": _wnid_variant("images", "imagenet_sketch"),
    "imagenet_a": _wnid_variant("imagenet-a", "imagenet_a", readme=True),
    "imagenet_r": _wnid_variant("imagenet-r", "imagenet_r"),
}
