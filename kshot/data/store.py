"""Where data lives: the data directory (archives), the cache directory (decoded arrays), downloads.

* The **data directory** holds the official archives, untouched. It is ``--data-dir`` if given, else
  ``$KSHOT_DATA_DIR``, else ``<user cache dir>/kshot/data``. It may be read-only: kshot only ever
  writes there to download a missing archive.
* The **cache directory** holds decoded arrays (``.npz``): ``$KSHOT_CACHE_DIR``, else
  ``<user cache dir>/kshot/cache``. Never beside the archives.
* A missing archive is downloaded from its official address with a progress bar, checked against
  the official MD5, and renamed into place only once complete, so a killed download leaves nothing.
  An archive the user already has is accepted after a structural check (names, counts) done by its
  loader, not by hash: re-packed archives with identical images are fine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from kshot.errors import KShotError

_APP = "kshot"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The directory that holds (or will hold) the official archives."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KSHOT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir(_APP)) / "data"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The directory for decoded arrays; created on demand."""
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("KSHOT_CACHE_DIR"):
        path = Path(os.environ["KSHOT_CACHE_DIR"]).expanduser()
    else:
        path = Path(platformdirs.user_cache_dir(_APP)) / "cache"
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception (or a kill before the rename) the temporary file is removed or left under a
    ``.tmp-`` name that no loader reads, so ``path`` is either absent, the old file, or complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Resource:
    """An official archive: its file name in the data directory, its address and its MD5."""

    filename: str
    url: str
    md5: str | None = None


def download(resource: Resource, dest_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Download ``resource`` into ``dest_dir``, verify its MD5, and move it into place atomically."""
    from tqdm.auto import tqdm

    dest = Path(dest_dir) / resource.filename
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KShotError(
            f"cannot create the data directory {dest.parent} ({exc.strerror}); "
            "pass a writable --data-dir or set KSHOT_DATA_DIR"
        ) from None
    if not os.access(dest.parent, os.W_OK):
        raise KShotError(
            f"{resource.filename} is missing and {dest.parent} is not writable; "
            "pass a writable --data-dir or put the archive there yourself"
        )
    digest = hashlib.md5()
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(resource.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=resource.filename, disable=not progress
            ) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if total is not None and tmp.stat().st_size != total:
                raise KShotError(
                    f"download of {resource.url} was truncated ({tmp.stat().st_size} of {total} "
                    "bytes); run the command again"
                )
            if resource.md5 and digest.hexdigest() != resource.md5:
                raise KShotError(
                    f"checksum mismatch for {resource.filename} from {resource.url} (md5 "
                    f"{digest.hexdigest()}, expected {resource.md5}); run the command again, or "
                    "download it by hand into the data directory"
                )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KShotError(
            f"could not download {resource.filename} from {resource.url} ({reason}); check the "
            f"network, or put the archive into {dest.parent} by hand (or pass --data-dir)"
        ) from None
    return dest


def fetch(
    resource: Resource,
    root: str | os.PathLike | None = None,
    download_missing: bool = True,
    progress: bool = True,
) -> Path:
    """The local path of ``resource``: found in the data directory, else downloaded there."""
    directory = data_dir(root)
    path = directory / resource.filename
    if path.is_file():
        return path
    if not download_missing:
        raise KShotError(
            f"{resource.filename} is not in {directory}; download it from {resource.url} or allow "
            "downloads"
        )
    return download(resource, directory, progress=progress)


def cached_arrays(
    key: str, build: Callable[[], dict[str, np.ndarray]], root: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """Load the arrays cached under ``key``, or ``build()`` them and cache them atomically.

    A cache file that cannot be read (truncated, foreign) is rebuilt rather than trusted.
    """
    path = cache_dir(root) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
    arrays = build()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    except OSError:
        pass  # an unwritable cache only costs time: the arrays are still returned
    return arrays
