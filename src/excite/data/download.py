"""Download data files (CIFAR archives, Fashion-MNIST/MNIST idx files) with MD5 verification (stdlib only: urllib, hashlib).

The file is streamed into ``<name>.part`` beside the target, checked, fsynced and renamed: an
interrupted or corrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from excite.core.errors import ExciteError, unknown_name

# The official archives and their MD5 sums as published on https://www.cs.toronto.edu/~kriz/cifar.html.
CIFAR_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def md5_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()  # noqa: S324 - an integrity check against the published sums, not security
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_cifar(name: str, root: str | Path = "data", *, url: str | None = None, md5: str | None = None,
                   progress: bool = False) -> Path:
    """Download the ``name`` (cifar10 | cifar100) archive into folder ``root``; return the archive path.

    An archive already there with the right MD5 is reused; one with a wrong MD5 is refused (it is
    not overwritten: it may be a different file the user put there). ``url``/``md5`` override the
    official ones (tests use a ``file://`` URL).
    """
    if name not in CIFAR_ARCHIVES:
        raise unknown_name("downloadable dataset", name, CIFAR_ARCHIVES)
    official_url, official_md5 = CIFAR_ARCHIVES[name]
    return download_file(url or official_url, md5 or official_md5, root, progress=progress)


def download_file(url: str, md5: str, root: str | Path, *, progress: bool = False) -> Path:
    """Download ``url`` into folder ``root`` (created) unless a file with MD5 ``md5`` is already there.

    The data is streamed into ``<name>.part``, checked, fsynced and renamed; a file of the same name
    with another MD5 is refused and left alone. Returns the file's path.
    """
    md5 = md5.lower()
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExciteError(f"cannot create download folder {root}: {e.strerror or e}") from None
    target = root / url.rstrip("/").rsplit("/", 1)[-1]
    if target.exists() and not target.is_file():
        raise ExciteError(f"{target} exists and is not a file; move it away to download the archive")
    if target.exists():
        got = md5_of(target)
        if got != md5:
            raise ExciteError(f"{target} exists but its MD5 is {got}, expected {md5}; delete it to download again")
        return target
    part = target.with_name(target.name + ".part")
    h = hashlib.md5()  # noqa: S324
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:  # noqa: S310 - http(s)/file only
            total = int(r.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=target.name, leave=False)
            while block := r.read(1 << 20):
                h.update(block)
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
            f.flush()
            os.fsync(f.fileno())
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise ExciteError(f"cannot download {url}: {reason}") from None
    if h.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise ExciteError(f"checksum mismatch for {url}: MD5 {h.hexdigest()}, expected {md5}; file discarded")
    os.replace(part, target)
    return target
