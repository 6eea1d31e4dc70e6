"""Named CLIP weights, verified cached downloads, and :func:`load` for every supported checkpoint layout.

* Registry: :data:`PRETRAINED` maps a name (``ViT-B/16``...) to a :class:`PretrainedEntry` holding the
  release URL, its SHA-256, the architecture, the MLP activation and the preprocessing. Pass your own
  mapping as ``registry=`` to use other entries; nothing is registered by import side effects.
* Cache: ``cache_dir``, else ``$MMPROMPT_CACHE/clip``, else ``~/.cache/mmprompt/clip``. A download goes to
  a ``.partial`` file, is checked against its SHA-256 and then renamed into place. A file whose digest is
  wrong is kept aside as ``<file>.corrupt-<digest8>`` and never used. Cached files are re-verified on every
  load; the digest is remembered in ``<file>.sha256`` (keyed by size and mtime) so large files are not
  re-hashed each time.
* Loading: :mod:`mmprompt.clip.loading` (``load`` is re-exported here); formats: :mod:`mmprompt.clip.convert`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..names import name_key
from .config import ACTIVATIONS

__all__ = [
    "PRETRAINED",
    "ChecksumError",
    "PretrainedEntry",
    "WeightsUnavailableError",
    "default_cache_dir",
    "fetch_pretrained",
    "get_pretrained",
    "list_pretrained",
    "sha256_file",
]

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_ENV = "MMPROMPT_CACHE"
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A file's SHA-256 is not the one its registry entry names (or the entry names none)."""


class WeightsUnavailableError(RuntimeError):
    """Named weights are neither cached nor downloadable from here."""


@dataclass(frozen=True)
class PretrainedEntry:
    """One downloadable set of weights and what is needed to use it."""

    name: str
    url: str
    sha256: str | None
    """Hex SHA-256 of the file at ``url``; ``None`` when unknown (then loading needs ``verify=False``)."""
    architecture: str
    """A name accepted by :func:`mmprompt.clip.config.get_config`, used to check the weights' shapes."""
    activation: str = "quick_gelu"
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    filename: str = ""
    """Name of the cached file; defaults to the last part of ``url``."""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if not self.filename:
            object.__setattr__(self, "filename", self.url.rstrip("/").rsplit("/", 1)[-1])


def _openai(name: str, digest: str, file: str, image_size: int = 224) -> PretrainedEntry:
    url = f"https://openaipublic.azureedge.net/clip/models/{digest}/{file}"
    return PretrainedEntry(name, url, digest, architecture=name, image_size=image_size)


# OpenAI's releases (clip/clip.py `_MODELS`); the digest is the URL's second-to-last part.
PRETRAINED: dict[str, PretrainedEntry] = {
    e.name: e
    for e in (
        _openai(
            "ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"
        ),
        _openai(
            "ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"
        ),
        _openai(
            "ViT-L/14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"
        ),
        _openai(
            "ViT-L/14@336px",
            "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            "ViT-L-14-336px.pt",
            image_size=336,
        ),
    )
}


def list_pretrained(registry: Mapping[str, PretrainedEntry] | None = None) -> list[str]:
    """Names accepted by :func:`load` and :func:`get_pretrained`."""
    return list(PRETRAINED if registry is None else registry)


def _find_entry(name: str, registry: Mapping[str, PretrainedEntry]) -> PretrainedEntry | None:
    wanted = name_key(name)
    return next((e for key, e in registry.items() if name_key(key) == wanted), None)


def get_pretrained(name: str, registry: Mapping[str, PretrainedEntry] | None = None) -> PretrainedEntry:
    """The registry entry called ``name`` (``ViT-B/16``, ``vit-b-16`` and ``ViT-B-16`` all match)."""
    registry = PRETRAINED if registry is None else registry
    entry = _find_entry(name, registry)
    if entry is None:
        raise KeyError(f"no pretrained CLIP weights called {name!r}; known: {', '.join(registry)}")
    return entry


def _entry_for_digest(digest: str | None, registry: Mapping[str, PretrainedEntry]) -> PretrainedEntry | None:
    if digest is None:
        return None
    return next((e for e in registry.values() if e.sha256 == digest), None)


# -------------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$MMPROMPT_CACHE/clip`` when the variable is set, else ``~/.cache/mmprompt/clip``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "clip"
    return Path.home() / ".cache" / "mmprompt" / "clip"


def sha256_file(path: str | Path, sidecar: bool = False) -> str:
    """Hex SHA-256 of a file.

    With ``sidecar`` the digest is remembered in ``<file>.sha256`` together with the file's size and
    mtime, and reused while both are unchanged.
    """
    path = Path(path)
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    side = path.with_name(path.name + ".sha256")
    if sidecar and side.is_file():
        try:
            record = json.loads(side.read_text(encoding="utf-8"))
            if {k: record.get(k) for k in key} == key and re.fullmatch(
                r"[0-9a-f]{64}", record.get("sha256", "")
            ):
                return record["sha256"]
        except (OSError, ValueError):
            pass  # an unreadable sidecar is recomputed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if sidecar:
        _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: Path, digest: str) -> None:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    side = path.with_name(path.name + ".sha256")
    try:
        side.write_text(json.dumps(record), encoding="utf-8")
    except OSError as exc:
        logger.debug("could not write %s: %s", side, exc)


def _set_aside(path: Path, digest: str) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{digest[:8]}")
    os.replace(path, aside)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    return aside


OFFLINE_ENV = "MMPROMPT_OFFLINE"
"""Set (``MMPROMPT_OFFLINE=1``) to never download: a registry name not in the cache is then the usual
"weights unavailable" error naming the file to fetch and where to put it (the docs tests use it)."""


def offline_mode() -> bool:
    """Whether ``MMPROMPT_OFFLINE`` forbids every download (weights, Hub repositories, datasets)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _download(url: str, dest: Path, expected: str | None, progress: bool) -> None:
    """Stream ``url`` to a ``.partial`` file beside ``dest``, check it, and rename it to ``dest``."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f"{dest.name}.", suffix=".partial")
    partial = Path(tmp)
    h = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mmprompt"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as src:
            length = src.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            ) as bar:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            aside = dest.with_name(f"{dest.name}.corrupt-{digest[:8]}")
            os.replace(partial, aside)
            raise ChecksumError(
                f"downloaded {url} but its SHA-256 is {digest}, expected {expected}. "
                f"The file was kept aside as {aside} and will not be used; try again, or fetch it by hand."
            )
        os.replace(partial, dest)
        _write_sidecar(dest, digest)
    finally:
        partial.unlink(missing_ok=True)


def fetch_pretrained(
    entry: PretrainedEntry, cache_dir: str | Path | None = None, verify: bool = True, progress: bool = True
) -> Path:
    """The path of ``entry``'s file in the cache, downloading and verifying it first if needed.

    A cached file that fails verification is set aside (``.corrupt-<digest8>``) and downloaded again.
    Raises :class:`ChecksumError` on a digest mismatch (or an entry without a digest while ``verify``),
    and :class:`WeightsUnavailableError`, naming the destination and the URL, when nothing is cached and
    the download fails.
    """
    if verify and entry.sha256 is None:
        raise ChecksumError(
            f"{entry.name}: the registry has no SHA-256 for {entry.url}, so the file cannot be verified; "
            "pass verify=False to use it unverified"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = cache / entry.filename
    note = ""
    if dest.is_file():
        if not verify:
            logger.warning("using %s without verifying its checksum", dest)
            return dest
        digest = sha256_file(dest, sidecar=True)
        if digest == entry.sha256:
            return dest
        aside = _set_aside(dest, digest)
        note = f" The cached copy had SHA-256 {digest} and was moved to {aside}."
        logger.warning("%s does not match its SHA-256; moved to %s and downloading again", dest, aside)
    try:
        if offline_mode():
            raise OSError(f"{OFFLINE_ENV} is set: no download")
        cache.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s to %s", entry.url, dest)
        _download(entry.url, dest, entry.sha256 if verify else None, progress)
    except (OSError, http.client.HTTPException) as exc:  # URLError and socket timeouts are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(
            f"could not download the {entry.name} CLIP weights ({reason}).{note} Nothing usable is cached at "
            f"{dest}. On a machine with internet, download {entry.url}"
            + (f" (SHA-256 {entry.sha256})" if entry.sha256 else "")
            + f" and place it at {dest} (or under $MMPROMPT_CACHE/clip, or pass cache_dir=...), or pass the "
            "file's path to load()."
        ) from exc
    return dest


# ----------------------------------------------------------------------------------------- loading (lazy)
_LOADING = ("WeightsInfo", "load", "load_state_dict_any")


def __getattr__(name: str) -> Any:
    """``load``, ``load_state_dict_any`` and ``WeightsInfo`` live in :mod:`mmprompt.clip.loading`."""
    if name in _LOADING:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
