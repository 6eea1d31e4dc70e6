"""Read the official few-shot caches (``split_fewshot/shot_K-seed_S.pkl``) without running arbitrary code.

CoOp pickles ``{"train": [Datum, ...], "val": [Datum, ...]}`` where ``Datum`` is
``dassl.data.datasets.base_dataset.Datum`` and the image paths are absolute paths of the machine that
wrote the file. :class:`RestrictedUnpickler` resolves only that class (to :class:`OfficialDatum`, a small
stand-in, so Dassl need not be installed) and the few builtins plain containers need; any other global,
such as ``os.system``, raises :class:`pickle.UnpicklingError`.
"""

from __future__ import annotations

import copyreg
import io
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmprompt.data.errors import SplitFileError
from mmprompt.data.samples import Sample

log = logging.getLogger(__name__)

DATUM_MODULE = "dassl.data.datasets.base_dataset"


class OfficialDatum:
    """Stand-in for Dassl's ``Datum``: ``impath``, ``label``, ``domain``, ``classname``."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        self.impath = impath
        self.label = label
        self.domain = domain
        self.classname = classname

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected Datum state of type {type(state).__name__}")
        for attr in ("impath", "label", "domain", "classname"):
            # Dassl stores the attributes as _impath, _label, ... behind read-only properties
            setattr(self, attr, state.get(f"_{attr}", state.get(attr, getattr(self, attr, None))))

    def __repr__(self) -> str:
        return f"OfficialDatum(impath={self.impath!r}, label={self.label!r}, classname={self.classname!r})"


_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "object"})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows only Dassl's ``Datum`` and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if module == DATUM_MODULE and name == "Datum":
            return OfficialDatum
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":  # pickles of protocol 0 and 1
            return copyreg._reconstructor
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name} (only Dassl's Datum is allowed)"
        )


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_official_fewshot(path: str | os.PathLike[str]) -> dict[str, list[OfficialDatum]]:
    """Read an official ``shot_K-seed_S.pkl``: {"train": [...], "val": [...]} ("val" absent for ImageNet)."""
    try:
        data = restricted_loads(Path(path).read_bytes())
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{path}: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise SplitFileError(f"{path}: not a readable few-shot cache ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or "train" not in data:
        raise SplitFileError(f"{path}: expected a dict with 'train' (and 'val') lists of Datum")
    for key, items in data.items():
        if not isinstance(items, list) or not all(isinstance(d, OfficialDatum) for d in items):
            raise SplitFileError(f"{path}: {key!r} must be a list of Datum objects")
    return data


def _tail_index(samples: Sequence[Sample]) -> dict[str, Sample]:
    return {s.path: s for s in samples}


def match_official(
    datums: Sequence[OfficialDatum], candidates: Sequence[Sample], source: str | os.PathLike[str], key: str
) -> list[Sample]:
    """Map absolute paths from another machine back onto ``candidates`` by the longest matching path tail.

    ``/home/x/data/caltech-101/101_ObjectCategories/face/image_0001.jpg`` matches the candidate
    ``face/image_0001.jpg``. The label must agree with the candidate's, otherwise the cache was made
    from a different split.
    """
    index = _tail_index(candidates)
    out = []
    for i, datum in enumerate(datums):
        parts = [p for p in str(datum.impath).replace("\\", "/").split("/") if p]
        match = next((index[t] for t in ("/".join(parts[j:]) for j in range(len(parts))) if t in index), None)
        if match is None:
            raise SplitFileError(
                f"{source}: {key}[{i}] ({datum.impath}) matches no image of the {key} split; the cache was made "
                "from a different split file; delete it or restore the matching split_zhou file"
            )
        if int(datum.label) != match.label:
            raise SplitFileError(
                f"{source}: {key}[{i}] ({datum.impath}) has label {datum.label} but the split says {match.label}; "
                "the cache was made from a different split"
            )
        out.append(match)
    return out
