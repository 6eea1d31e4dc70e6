"""Resumable, verified downloads of one dataset file from its sources, tried in order.

A download goes to ``<file>.part`` (with ``<file>.part.url`` naming the URL it came from). An interrupted
transfer is continued with an HTTP ``Range`` request, in the same run (a dropped connection is retried)
or in the next one. The whole file is checked against its published MD5 / SHA-256 before it is renamed
into place; a file that does not match is deleted and the next source is tried. A source that fails
(HTTP error, proxy or TLS error, a web page instead of the file) is reported in one line naming its host
and the source tried next.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from mmprompt.data.datasets._base import DownloadFile
from mmprompt.data.errors import DataError

__all__ = ["DiskSpaceError", "DownloadError", "checksum_of", "fetch_file", "verify_file"]

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0
RETRIES = 3
"""How many times one source is asked to continue a transfer whose connection dropped."""
_CHUNK = 1 << 20


class DownloadError(DataError):
    """No source of a file could be downloaded and verified, or a local archive is not the expected file."""


class DiskSpaceError(OSError):
    """The data root has not enough free space; what is already complete is kept."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.args[1])


class _SourceFailed(Exception):
    """One source failed; the reason is shown in one line and the next source is tried."""


def host_of(url: str) -> str:
    return urlparse(url).hostname or url


def checksum_of(file: DownloadFile) -> tuple[str, str] | None:
    """``(algorithm, hex digest)`` published for ``file``, or None when none is published."""
    if file.sha256:
        return "sha256", file.sha256
    if file.md5:
        return "md5", file.md5
    return None


def _digest(path: Path, algo: str, progress: bool) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"verifying {path.name}", disable=not progress, leave=False) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verify_file(path: Path, file: DownloadFile, progress: bool = False) -> str | None:
    """Check ``path`` against ``file``'s published checksum; returns the mismatch in words, or None if it fits.

    A file without a published checksum cannot be verified: a warning says so and gives its SHA-256.
    """
    expected = checksum_of(file)
    if expected is None:
        digest = _digest(path, "sha256", progress)
        logger.warning("%s: no checksum is published for this file, so it cannot be verified (its SHA-256 is %s, "
                       "%d bytes)", file.name, digest, path.stat().st_size)
        return None
    algo, value = expected
    actual = _digest(path, algo, progress)
    if actual != value:
        return f"its {algo.upper()} is {actual}, expected {value}"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    text = str(reason) or type(reason).__name__
    if "CERTIFICATE" in text.upper() or "SSL" in text.upper() or "TLS" in text.upper():
        return f"TLS error: {text}"
    if "proxy" in text.lower() or isinstance(reason, OSError) and reason.errno == errno.ECONNREFUSED:
        return f"connection refused (a proxy or firewall?): {text}"
    return text


def _transfer(url: str, partial: Path, progress: bool, desc: str, opener: urllib.request.OpenerDirector) -> None:
    """Fetch ``url`` into ``partial``, continuing from its current size with a Range request."""
    start = partial.stat().st_size if partial.is_file() else 0
    headers = {"User-Agent": "mmprompt"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send: the file is complete
            return
        raise
    with response:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise _SourceFailed(f"the host answered a resume request with the range {content_range!r}")
            mode = "ab"
        else:
            start, mode = 0, "wb"  # the host ignores Range: start again
        ctype = response.headers.get("Content-Type", "")
        if ctype.startswith("text/html") and not partial.name.removesuffix(".part").endswith(".html"):
            raise _SourceFailed("the host answered with a web page (a sign-in, quota or moved page), not the file")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(partial, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                              unit_divisor=1024, desc=desc, disable=not progress) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and partial.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - partial.stat().st_size)


def _from_source(url: str, dest: Path, file: DownloadFile, progress: bool,
                 opener: urllib.request.OpenerDirector) -> None:
    partial = dest.with_name(dest.name + ".part")
    source = partial.with_name(partial.name + ".url")
    if partial.exists() and (not source.is_file() or source.read_text(encoding="utf-8").strip() != url):
        partial.unlink()  # a partial file from another source is not continued: the bytes may differ
    source.write_text(url + "\n", encoding="utf-8")
    for attempt in range(RETRIES + 1):
        try:
            _transfer(url, partial, progress, file.name, opener)
            break
        except (http.client.IncompleteRead, ConnectionResetError, TimeoutError) as exc:
            if attempt == RETRIES:
                raise
            logger.warning("%s: the connection to %s dropped after %d bytes (%s); continuing where it stopped",
                           file.name, host_of(url), partial.stat().st_size if partial.exists() else 0,
                           type(exc).__name__)
    problem = verify_file(partial, file, progress)
    if problem is not None:
        partial.unlink(missing_ok=True)
        source.unlink(missing_ok=True)
        raise _SourceFailed(f"the file was refused and deleted: {problem}")
    os.replace(partial, dest)
    source.unlink(missing_ok=True)


def fetch_file(file: DownloadFile, dest: Path, progress: bool = True,
               opener: urllib.request.OpenerDirector | None = None) -> Path:
    """``dest`` holding ``file``, downloaded from its first source that works and verified.

    Raises :class:`DownloadError` listing every source's failure when none works (the partial file of the
    last one is kept, so the next run continues it), and ``OSError`` (``ENOSPC``) when the disk is full.
    """
    if not file.urls:
        raise DownloadError(f"{file.name} cannot be downloaded without a login: pass your copy with --from-archive")
    from ..clip.weights import OFFLINE_ENV, offline_mode

    if offline_mode():
        raise DownloadError(f"{file.name}: {OFFLINE_ENV} is set, so nothing is downloaded; unset it, or pass your "
                            "own copy with --from-archive")
    opener = opener or urllib.request.build_opener()
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for i, url in enumerate(file.urls):
        try:
            _from_source(url, dest, file, progress, opener)
            return dest
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            reason = _describe(exc)
        except (_SourceFailed, http.client.HTTPException, ValueError) as exc:
            reason = _describe(exc)
        proxy = urllib.request.getproxies().get(urlparse(url).scheme)
        if proxy and not urllib.request.proxy_bypass(host_of(url)):
            reason += f"; through the proxy {proxy}"
        nxt = f"trying {host_of(file.urls[i + 1])}" if i + 1 < len(file.urls) else "no other source"
        logger.warning("%s: %s failed (%s); %s", file.name, host_of(url), reason, nxt)
        failures.append(f"{host_of(url)}: {reason}")
    raise DownloadError(
        f"could not download {file.name} from any of its {len(file.urls)} source(s) ({'; '.join(failures)}). "
        f"Run the command again to retry (a partial download is continued), or download it yourself and pass "
        f"it with --from-archive (tried: {', '.join(file.urls)})"
    )
