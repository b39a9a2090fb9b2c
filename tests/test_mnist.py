"""kshot.data.mnist: the IDX reader and the MNIST loader on the real test set."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kshot.data import mnist
from kshot.data.mnist import MNIST_RESOURCES, load_mnist, read_idx
from kshot.data.store import Resource, md5sum
from kshot.errors import KShotError

# Items per digit in the official MNIST test set.
MNIST_TEST_CLASS_SIZES = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_dir(shared_data: Path) -> Path:
    """The folder holding the official files (``<data dir>/mnist``)."""
    for resource in MNIST_RESOURCES["test"].values():
        if not (shared_data / resource.filename).is_file():
            pytest.skip(f"{resource.filename} is not in {shared_data}")
    return shared_data / "mnist"


@pytest.fixture(scope="module")
def mnist_test(mnist_dir: Path):
    return load_mnist("test", data_dir=mnist_dir.parent, download=False, progress=False)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# --- the real test set -------------------------------------------------------------------------


def test_mnist_test_set_shape_and_classes(mnist_test) -> None:
    assert len(mnist_test) == 10_000
    assert mnist_test.n_classes == 10
    assert mnist_test.class_names == tuple(str(d) for d in range(10))
    assert mnist_test.images.dtype == torch.uint8
    assert mnist_test.images.shape == (10_000, 1, 28, 28)
    assert mnist_test.sizes.tolist() == MNIST_TEST_CLASS_SIZES
    assert int(mnist_test.sizes.sum()) == len(mnist_test)
    assert mnist_test.name == "mnist-test"


def test_mnist_test_set_is_sorted_by_class_with_bright_ink(mnist_test, mnist_dir: Path) -> None:
    raw_images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz", expected_magic=2051)
    raw_labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", expected_magic=2049)
    order = np.argsort(raw_labels, kind="stable")
    np.testing.assert_array_equal(mnist_test.images[:, 0].numpy(), raw_images[order])
    assert torch.equal(mnist_test.labels, torch.from_numpy(raw_labels[order].astype(np.int64)))
    # ink bright on a zero background: border pixels are dark, the mean is low
    assert int(mnist_test.images[:, :, 0, :].max()) == 0
    assert float(mnist_test.images.float().mean()) < 60


def test_read_idx_reads_raw_and_gzip_identically(mnist_dir: Path, tmp_path: Path) -> None:
    gz_path = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    raw_path = tmp_path / "t10k-labels-idx1-ubyte"
    raw_path.write_bytes(gzip.decompress(gz_path.read_bytes()))
    from_gzip, from_raw = read_idx(gz_path), read_idx(raw_path)
    assert from_gzip.dtype == np.uint8 and from_gzip.shape == (10_000,)
    np.testing.assert_array_equal(from_gzip, from_raw)
    from_raw[0] = 7  # a writable array, not a view of the file's bytes


def test_read_idx_rejects_a_truncated_gzip_copy(mnist_dir: Path, tmp_path: Path) -> None:
    original = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    truncated = tmp_path / "t10k-images-idx3-ubyte.gz"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(KShotError, match=r"t10k-images-idx3-ubyte\.gz.*delete it"):
        read_idx(truncated)


def test_load_mnist_rejects_a_truncated_file_in_the_data_dir(
    mnist_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "mnist").mkdir()
    for resource in MNIST_RESOURCES["test"].values():
        shutil.copy(mnist_dir.parent / resource.filename, tmp_path / resource.filename)
    labels_file = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw_labels = gzip.decompress(labels_file.read_bytes())
    labels_file.write_bytes(gzip.compress(raw_labels[:-100]))  # a valid gzip of a short IDX
    with pytest.raises(KShotError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated.*delete it"):
        load_mnist("test", data_dir=tmp_path, download=False)


# --- the IDX reader on small synthetic files ---------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "images.idx", images, compress)
    np.testing.assert_array_equal(read_idx(path, expected_magic=2051), images)


def test_read_idx_reads_wider_types(tmp_path: Path) -> None:
    values = np.array([[1, -2, 3], [40000, 5, -6]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + np.array([2, 3], ">u4").tobytes() + values.tobytes())
    result = read_idx(path)
    assert result.dtype == np.int32 and result.dtype.isnative
    np.testing.assert_array_equal(result, values)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "shorter than the header"),
        (b"\x00\x00\x08", "shorter than the header"),
        (b"PK\x03\x04 not an idx file", "bad magic number"),
        (bytes([0, 0, 0x08, 3]) + np.array([2, 28], ">u4").tobytes(), "header is truncated"),
        (bytes([0, 0, 0x08, 1]) + np.array([5], ">u4").tobytes() + b"\x01\x02", "truncated"),
        (bytes([0, 0, 0x08, 1]) + np.array([2], ">u4").tobytes() + b"\x01\x02\x03", "trailing"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ],
    ids=["empty", "short", "foreign", "short-header", "short-payload", "long-payload", "bad-gzip"],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(KShotError, match=message) as raised:
        read_idx(path)
    assert "broken-idx1-ubyte" in str(raised.value) and "delete it" in str(raised.value)


def test_read_idx_checks_the_expected_magic(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.idx", np.arange(4, dtype=np.uint8))
    assert read_idx(path, expected_magic=2049).tolist() == [0, 1, 2, 3]
    with pytest.raises(KShotError, match="magic number 2049, expected 2051"):
        read_idx(path, expected_magic=2051)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KShotError, match="cannot read .*nothing.idx"):
        read_idx(tmp_path / "nothing.idx")


# --- load_mnist's structural checks ------------------------------------------------------------


def write_test_pair(data_dir: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """Write a small test pair where ``load_mnist`` looks for it; return (images, labels) paths."""
    paths = [data_dir / MNIST_RESOURCES["test"][kind].filename for kind in ("images", "labels")]
    paths[0].parent.mkdir(exist_ok=True)
    return write_idx(paths[0], images, compress=True), write_idx(paths[1], labels, compress=True)


def test_load_mnist_small_valid_pair(tmp_path: Path) -> None:
    images = np.arange(4 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(4, 28, 28)
    write_test_pair(tmp_path, images, np.array([3, 0, 3, 9], dtype=np.uint8))
    dataset = load_mnist("test", data_dir=tmp_path, download=False)
    assert dataset.sizes.tolist() == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images[[1, 0, 2, 3]]))


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8), "3 images but .* 2 labels"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 10], np.uint8), "label 10 outside 0..9"),
        (np.zeros((2, 32, 32), np.uint8), np.zeros(2, np.uint8), "32x32, expected 28x28"),
    ],
    ids=["count-mismatch", "bad-label", "wrong-size"],
)
def test_load_mnist_structural_checks(tmp_path: Path, images, labels, message: str) -> None:
    write_test_pair(tmp_path, images, labels)
    with pytest.raises(KShotError, match=message):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_load_mnist_swapped_files_fail_the_magic_check(tmp_path: Path) -> None:
    images_file, labels_file = write_test_pair(
        tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8)
    )
    images_bytes = images_file.read_bytes()
    images_file.write_bytes(labels_file.read_bytes())
    labels_file.write_bytes(images_bytes)
    with pytest.raises(KShotError, match="expected 2051"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_load_mnist_unknown_subset() -> None:
    with pytest.raises(KShotError, match="unknown MNIST subset 'validation'"):
        load_mnist("validation")


def test_load_mnist_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(KShotError, match="t10k-images-idx3-ubyte.gz is not in"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_official_resources() -> None:
    assert set(MNIST_RESOURCES) == {"train", "test"}
    for subset, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = MNIST_RESOURCES[subset]["images"], MNIST_RESOURCES[subset]["labels"]
        assert images.filename == f"mnist/{prefix}-images-idx3-ubyte.gz"
        assert labels.filename == f"mnist/{prefix}-labels-idx1-ubyte.gz"
        for resource in (images, labels):
            assert resource.url == mnist.MNIST_URL_BASE + Path(resource.filename).name
            assert resource.url.startswith("https://") and len(resource.md5) == 32


# --- download from a local server --------------------------------------------------------------


def test_load_mnist_downloads_into_an_empty_data_dir(
    mnist_dir: Path, http_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_resources = {}
    for kind, resource in MNIST_RESOURCES["test"].items():
        source = mnist_dir.parent / resource.filename
        url = http_server.serve(resource.filename, source.read_bytes())
        local_resources[kind] = Resource(resource.filename, url, md5sum(source))
    monkeypatch.setitem(MNIST_RESOURCES, "test", local_resources)
    data_dir = tmp_path / "empty-data-dir"

    dataset = load_mnist("test", data_dir=data_dir, progress=False)

    assert len(dataset) == 10_000 and dataset.sizes.tolist() == MNIST_TEST_CLASS_SIZES
    assert sorted(
        str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()
    ) == sorted(r.filename for r in local_resources.values())
    assert sorted(http_server.requests) == sorted(
        f"/{r.filename}" for r in local_resources.values()
    )
    load_mnist("test", data_dir=data_dir, progress=False)  # now present: no second download
    assert len(http_server.requests) == 2
