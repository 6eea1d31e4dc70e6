"""Loading images: decoding, errors that name the file, skipping corrupt images, seeded loaders."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmprompt.data import CorruptImageError, DataError, ImageDataset, Sample, make_loader, validate_samples


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def random_draws(image: Image.Image) -> torch.Tensor:
    """A "transform" that reveals the worker's random states."""
    return torch.tensor(
        [random.random(), float(np.random.rand()), float(torch.rand(()))], dtype=torch.float64
    )


def _write_images(folder: Path, n_classes: int, per_class: int, mode: str = "RGB") -> list[Sample]:
    samples = []
    for label in range(n_classes):
        for i in range(per_class):
            path = folder / f"c{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (8, 6), (label * 40 + i) if mode == "L" else (label * 40, i, 7)).save(path)
            samples.append(Sample(f"c{label}/{i}.png", label, f"class {label}"))
    return samples


def test_dataset_decodes_to_rgb_and_applies_transform(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 2, 2, mode="L")  # grey-scale files come out as RGB
    ds = ImageDataset(samples, to_tensor, image_dir=tmp_path)
    image, label, index, _ = ds[3]
    assert image.shape == (3, 6, 8) and label == 1 and index == 3
    assert torch.equal(image[0], image[1])
    raw = ImageDataset(samples, None, image_dir=tmp_path)[0][0]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_loader_batches_and_dassl_drop_last_rule(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 2, 3)
    loader = make_loader(
        samples, to_tensor, batch_size=4, shuffle=True, drop_last=True, seed=0, image_dir=tmp_path
    )
    batches = list(loader)
    assert len(batches) == 1 and batches[0][0].shape == (4, 3, 6, 8)  # 6 samples: the last 2 dropped
    few = make_loader(
        samples[:3], to_tensor, batch_size=4, shuffle=True, drop_last=True, seed=0, image_dir=tmp_path
    )
    assert [len(b[1]) for b in few] == [3]  # fewer samples than a batch: nothing dropped
    test = make_loader(samples, to_tensor, batch_size=4, shuffle=False, drop_last=False, image_dir=tmp_path)
    assert torch.cat([b[1] for b in test]).tolist() == [s.label for s in samples]


def test_loader_order_is_seeded(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 4, 5)

    def order(seed: int) -> list[int]:
        loader = make_loader(
            samples, to_tensor, 1, shuffle=True, drop_last=False, seed=seed, image_dir=tmp_path
        )
        return [int(b.images[0, 0, 0, 0]) * 100 + int(b.images[0, 1, 0, 0]) for b in loader]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == sorted(order(4))


def test_make_loader_is_the_training_loader(tmp_path: Path) -> None:
    """One loading path: make_loader's epochs are the engine's epoch_order, advanced by set_epoch."""
    from mmprompt.engine.loader import ImageDataset as EngineDataset
    from mmprompt.engine.loader import epoch_order

    assert EngineDataset is ImageDataset
    samples = _write_images(tmp_path, 3, 3)
    loader = make_loader(samples, to_tensor, 2, shuffle=True, drop_last=False, seed=5, image_dir=tmp_path)
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        got = torch.cat([b.indices for b in loader]).tolist()
        assert got == epoch_order(len(samples), 5, epoch)[0]


def test_workers_are_seeded(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 1, 4)

    def draws(seed: int) -> torch.Tensor:
        loader = make_loader(
            samples,
            random_draws,
            1,
            shuffle=False,
            drop_last=False,
            num_workers=2,
            seed=seed,
            image_dir=tmp_path,
        )
        return torch.cat([b.images for b in loader])

    first, again, other = draws(7), draws(7), draws(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # worker 0 gets items 0 and 2, worker 1 items 1 and 3: their python/numpy streams differ
    assert first[0, 0] != first[1, 0] and first[0, 1] != first[1, 1]


def test_corrupt_image_error_names_the_file(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 2, 3)
    bad = tmp_path / "c1" / "1.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(CorruptImageError, match=str(bad)):
        ImageDataset(samples, to_tensor, tmp_path)[4]
    loader = make_loader(samples, to_tensor, 2, shuffle=False, drop_last=False, image_dir=tmp_path)
    with pytest.raises(CorruptImageError, match=str(bad)):
        list(loader)
    with pytest.raises(CorruptImageError, match=str(bad)):
        validate_samples(samples, skip_corrupt=False, image_dir=tmp_path)


def test_truncated_image_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptImageError, match="a.jpg"):
        validate_samples([Sample("a.jpg", 0, "x")], skip_corrupt=False, image_dir=tmp_path)


def test_missing_image_fails_before_loading(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 2, 2)
    missing = tmp_path / "c0" / "1.png"
    missing.unlink()
    with pytest.raises(CorruptImageError) as err:
        make_loader(samples, to_tensor, 2, shuffle=True, drop_last=True, image_dir=tmp_path)
    assert str(missing) in str(err.value) and "1 of 4" in str(err.value)


def test_skip_corrupt_drops_counts_and_logs(tmp_path: Path, caplog) -> None:
    samples = _write_images(tmp_path, 3, 3)
    (tmp_path / "c0" / "0.png").write_bytes(b"junk")
    (tmp_path / "c2" / "2.png").unlink()
    kept, skipped = validate_samples(samples, skip_corrupt=True, image_dir=tmp_path)
    assert len(kept) == 7
    assert sorted(skipped) == sorted([str(tmp_path / "c0" / "0.png"), str(tmp_path / "c2" / "2.png")])
    with caplog.at_level("WARNING", logger="mmprompt.data"):
        loader = make_loader(samples, to_tensor, 2, True, False, skip_corrupt=True, image_dir=tmp_path)
    assert len(loader.dataset) == 7
    assert any("left out 2 unreadable" in r.getMessage() for r in caplog.records)
    assert sum(len(b.labels) for b in loader) == 7


def test_class_losing_all_images_is_an_error(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 2, 2)
    for i in range(2):
        (tmp_path / "c1" / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="'class 1'"):
        validate_samples(samples, skip_corrupt=True, image_dir=tmp_path)
    with pytest.raises(DataError, match="'class 1'"):
        make_loader(samples, to_tensor, 2, True, True, skip_corrupt=True, image_dir=tmp_path)


def test_absolute_sample_paths_need_no_image_dir(tmp_path: Path) -> None:
    samples = [Sample(str(s.resolve(tmp_path)), s.label, s.classname) for s in _write_images(tmp_path, 1, 2)]
    image = ImageDataset(samples, to_tensor)[1][0]
    assert image.shape == (3, 6, 8)


def test_empty_or_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        make_loader([], to_tensor, 2, True, True)
    with pytest.raises(ValueError):
        make_loader(_write_images(tmp_path, 1, 1), to_tensor, 0, True, True, image_dir=tmp_path)
