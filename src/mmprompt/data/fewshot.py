"""The few-shot selection of a run, with its caches.

Order of sources: the official ``<dataset_dir>/split_fewshot/shot_K-seed_S.pkl`` if present (read with a
restricted unpickler), else mmprompt's JSON cache
``<cache>/fewshot/<dataset>/split-<fingerprint>/shot_K-seed_S.json`` (one folder per split) if it
was made from the same split, else the official algorithm (:func:`~mmprompt.data.samples.sample_fewshot`),
whose result is then written to that JSON cache. Nothing is ever written into the dataset folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from mmprompt.data.errors import SplitFileError
from mmprompt.data.official_pickle import load_official_fewshot, match_official
from mmprompt.data.samples import Sample, fingerprint, sample_fewshot, split_to_json, write_json_atomic

log = logging.getLogger(__name__)

CACHE_ENV = "MMPROMPT_CACHE"
CACHE_FORMAT = "mmprompt-fewshot/1"


def default_cache_dir() -> Path:
    """``$MMPROMPT_CACHE`` if set, else ``~/.cache/mmprompt``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmprompt"


def fewshot_cache_path(cache_dir: str | os.PathLike[str] | None, dataset: str, shots: int, seed: int,
                       split_key: str | None = None) -> Path:
    """``<cache>/fewshot/<dataset>/<split_key>/shot_K-seed_S.json``: one folder per split (``split_key``, the
    fingerprint of the samples the selection is drawn from), so two split files of one dataset keep their
    own selections; without ``split_key``, the dataset's folder."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / "fewshot" / dataset
    return (folder / f"split-{split_key}" if split_key else folder) / f"shot_{shots}-seed_{seed}.json"


def official_fewshot_path(dataset_dir: str | os.PathLike[str], shots: int, seed: int) -> Path:
    """Where CoOp/MaPLe leave their few-shot cache: ``<dataset_dir>/split_fewshot/shot_K-seed_S.pkl``."""
    return Path(dataset_dir) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def _read_json_cache(
    path: Path, key: str, train: Sequence[Sample], val: Sequence[Sample] | None
) -> tuple[list[Sample], list[Sample] | None] | None:
    """The cached selection, or None when absent, unreadable or made from another split."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != CACHE_FORMAT or data.get("fingerprint") != key:
            log.info("few-shot cache %s was made from a different split; sampling again", path)
            return None
        by_path = {s.path: s for s in train}
        new_train = [by_path[p] for p, _, _ in data["train"]]
        new_val = None
        if val is not None:
            by_path = {s.path: s for s in val}
            new_val = [by_path[p] for p, _, _ in data["val"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring unreadable few-shot cache %s (%s: %s)", path, type(e).__name__, e)
        return None
    return new_train, new_val


def select_fewshot(
    dataset: str,
    dataset_dir: str | os.PathLike[str] | None,
    train: Sequence[Sample],
    val: Sequence[Sample] | None,
    shots: int,
    seed: int,
    cache_dir: str | os.PathLike[str] | None = None,
    use_official_cache: bool = True,
) -> tuple[list[Sample], list[Sample] | None, str]:
    """The few-shot train (and val) selection for ``shots`` and ``seed``; returns ``(train, val, source)``.

    ``val=None`` means the dataset has no own validation set (ImageNet): only train is sampled.
    ``shots < 1`` keeps all samples. ``cache_dir`` is the cache root (default :func:`default_cache_dir`).
    """
    if shots < 1:
        return list(train), None if val is None else list(val), "all samples (no few-shot sampling)"

    if use_official_cache and dataset_dir is not None:
        pkl = official_fewshot_path(dataset_dir, shots, seed)
        if pkl.is_file():
            data = load_official_fewshot(pkl)
            new_train = match_official(data["train"], train, pkl, "train")
            new_val = None
            if val is not None:
                if "val" not in data:
                    raise SplitFileError(f"{pkl}: has no 'val' list")
                new_val = match_official(data["val"], val, pkl, "val")
            log.info("read the official few-shot selection from %s (restricted unpickler)", pkl)
            return new_train, new_val, f"official cache {pkl}"

    key = fingerprint(train, val or [])
    path = fewshot_cache_path(cache_dir, dataset, shots, seed, key)
    cached = _read_json_cache(path, key, train, val)
    if cached is not None:
        log.debug("read the few-shot selection from %s", path)
        return cached[0], cached[1], f"cache {path}"

    new_train, new_val = sample_fewshot(train, val, shots, seed)
    payload = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "fingerprint": key,
        "train": split_to_json(new_train),
        "val": None if new_val is None else split_to_json(new_val),
    }
    try:
        write_json_atomic(path, payload)
        log.info("sampled %d-shot data with seed %d; saved the selection to %s", shots, seed, path)
    except OSError as e:
        log.warning("could not write the few-shot cache %s (%s); continuing without it", path, e)
    return new_train, new_val, f"sampled with seed {seed}"
