"""MNIST (LeCun et al. 1998) from its official IDX files: 10 digit classes, 28x28 grayscale.

The four official files (``train-``/``t10k-`` ``images-idx3-ubyte.gz`` / ``labels-idx1-ubyte.gz``)
live untouched in the data directory. A missing file is downloaded from the mirror torchvision uses
and checked against the official MD5; a file the user already has is accepted after a structural
check (magic numbers, sizes, matching counts, labels ``0..9``), not by hash.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from kshot.data.dataset import ClassDataset
from kshot.data.store import Resource, fetch
from kshot.errors import KShotError

MNIST_URL_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""Where missing files are downloaded from (yann.lecun.com is often down)."""

IDX_IMAGES_MAGIC = 2051
"""Magic number of an IDX file of unsigned bytes with 3 dimensions (images)."""
IDX_LABELS_MAGIC = 2049
"""Magic number of an IDX file of unsigned bytes with 1 dimension (labels)."""

MNIST_IMAGE_SIZE = 28
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))

MNIST_RESOURCES: dict[str, dict[str, Resource]] = {
    "train": {
        "images": Resource(
            "mnist/train-images-idx3-ubyte.gz",
            MNIST_URL_BASE + "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        "labels": Resource(
            "mnist/train-labels-idx1-ubyte.gz",
            MNIST_URL_BASE + "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
        ),
    },
    "test": {
        "images": Resource(
            "mnist/t10k-images-idx3-ubyte.gz",
            MNIST_URL_BASE + "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
        ),
        "labels": Resource(
            "mnist/t10k-labels-idx1-ubyte.gz",
            MNIST_URL_BASE + "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    },
}
"""The official files of each subset (``"train"``, ``"test"``): ``{"images": R, "labels": R}``."""

# IDX element type code (third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, problem: str) -> KShotError:
    return KShotError(
        f"{path} is not a valid IDX file ({problem}); delete it so it is downloaded again, "
        "or replace it with the official file"
    )


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of its shape and native dtype.

    The header is a 4-byte magic number (two zero bytes, the element type code, the number of
    dimensions) followed by one big-endian ``uint32`` per dimension; the payload must hold exactly
    ``prod(dims)`` elements. ``expected_magic`` (e.g. 2051 for images, 2049 for labels) is checked
    when given. A truncated or corrupt file raises :class:`KShotError` naming it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise KShotError(
            f"cannot read {path} ({exc.strerror}); check that it exists and is readable"
        ) from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise _corrupt(path, f"gzip stream is truncated or damaged: {exc}") from None
    if len(raw) < 4:
        raise _corrupt(path, f"only {len(raw)} bytes, shorter than the header")
    magic = int.from_bytes(raw[:4], "big")
    type_code, n_dims = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or n_dims == 0:
        raise _corrupt(path, f"bad magic number {magic}")
    if expected_magic is not None and magic != expected_magic:
        raise _corrupt(path, f"magic number {magic}, expected {expected_magic}")
    header_size = 4 + 4 * n_dims
    if len(raw) < header_size:
        raise _corrupt(path, "header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=n_dims, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload_bytes = len(raw) - header_size
    if payload_bytes != expected_bytes:
        state = "truncated" if payload_bytes < expected_bytes else "has trailing data"
        raise _corrupt(
            path, f"{state}: {payload_bytes} data bytes for shape {dims}, expected {expected_bytes}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def load_mnist(
    subset: str = "test",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> ClassDataset:
    """MNIST's ``"train"`` (60,000) or ``"test"`` (10,000) images as a :class:`ClassDataset`.

    Classes ``"0"``..``"9"``, images ``uint8 [N, 1, 28, 28]`` with bright ink on 0 (as stored).
    Files are taken from ``data_dir`` (else ``$KSHOT_DATA_DIR``, else the user data directory) and
    downloaded there when missing, unless ``download`` is False.
    """
    if subset not in MNIST_RESOURCES:
        raise KShotError(
            f"unknown MNIST subset {subset!r}; choose one of {sorted(MNIST_RESOURCES)}"
        )
    resources = MNIST_RESOURCES[subset]
    images_path = fetch(resources["images"], data_dir, download_missing=download, progress=progress)
    labels_path = fetch(resources["labels"], data_dir, download_missing=download, progress=progress)
    images = read_idx(images_path, expected_magic=IDX_IMAGES_MAGIC)  # uint8 [N, 28, 28]
    labels = read_idx(labels_path, expected_magic=IDX_LABELS_MAGIC)  # uint8 [N]
    if images.shape[1:] != (MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE):
        height, width = images.shape[1:]
        raise _corrupt(images_path, f"images are {height}x{width}, expected 28x28")
    if len(images) != len(labels):
        raise KShotError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds "
            f"{len(labels)} labels; delete both so they are downloaded again"
        )
    if len(labels) and int(labels.max()) >= len(MNIST_CLASS_NAMES):
        raise _corrupt(labels_path, f"label {int(labels.max())} outside 0..9")
    dataset = ClassDataset.from_labels(
        torch.from_numpy(images).unsqueeze(1),  # uint8 [N, 1, 28, 28]
        torch.from_numpy(labels.astype(np.int64)),
        class_names=MNIST_CLASS_NAMES,
        name=f"mnist-{subset}",
    )
    dataset.meta.update(subset=subset, files=(str(images_path), str(labels_path)), namespace="mnist")
    return dataset
