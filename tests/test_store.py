"""kshot.data.store: directory precedence, atomic writes, the array cache, and downloads."""

from __future__ import annotations

import hashlib
import io
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kshot.data import store
from kshot.data.store import (
    Resource,
    atomic_path,
    cache_dir,
    cached_arrays,
    data_dir,
    download,
    fetch,
)
from kshot.errors import KShotError

# --- directories -------------------------------------------------------------------------------


@pytest.fixture
def user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point platformdirs' user cache dir at a temp folder and clear kshot's env variables."""
    user_dir = tmp_path / "user-cache"
    monkeypatch.setattr(store.platformdirs, "user_cache_dir", lambda app: str(user_dir / app))
    monkeypatch.delenv("KSHOT_DATA_DIR", raising=False)
    monkeypatch.delenv("KSHOT_CACHE_DIR", raising=False)
    return user_dir


@pytest.mark.parametrize(
    ("resolve", "env_name", "default_leaf"),
    [(data_dir, "KSHOT_DATA_DIR", "data"), (cache_dir, "KSHOT_CACHE_DIR", "cache")],
)
def test_directory_precedence_explicit_then_env_then_user_dir(
    resolve, env_name: str, default_leaf: str, user_cache: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert resolve() == user_cache / "kshot" / default_leaf
    monkeypatch.setenv(env_name, str(tmp_path / "from-env"))
    assert resolve() == tmp_path / "from-env"
    assert resolve(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.setenv(env_name, "")  # an empty variable counts as unset
    assert resolve() == user_cache / "kshot" / default_leaf


def test_directory_expands_user_home(user_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir("~/kshot-data") == tmp_path / "kshot-data"


# --- atomic_path -------------------------------------------------------------------------------


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".tmp-")
        tmp.write_bytes(b"complete")
        assert not target.exists()
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_path_leaves_nothing_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new but broken")
        raise RuntimeError
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


# --- cached_arrays -----------------------------------------------------------------------------


class CountingBuilder:
    """A ``build`` callable that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        return {"images": images, "offsets": np.array([0, 2])}


def test_cached_arrays_builds_once_then_loads(tmp_path: Path) -> None:
    build = CountingBuilder()
    first = cached_arrays("toy", build, root=tmp_path)
    assert build.calls == 1
    assert (tmp_path / "toy.npz").is_file()
    second = cached_arrays("toy", build, root=tmp_path)
    assert build.calls == 1
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    assert [p.name for p in tmp_path.iterdir()] == ["toy.npz"]


@pytest.mark.parametrize(
    "damage",
    [lambda data: b"definitely not an npz file", lambda data: b""],
    ids=["garbage", "empty"],
)
def test_cached_arrays_rebuilds_a_corrupt_cache_file(tmp_path: Path, damage) -> None:
    build = CountingBuilder()
    cached_arrays("toy", build, root=tmp_path)
    cache_file = tmp_path / "toy.npz"
    cache_file.write_bytes(damage(cache_file.read_bytes()))
    rebuilt = cached_arrays("toy", build, root=tmp_path)
    assert build.calls == 2
    np.testing.assert_array_equal(rebuilt["images"], CountingBuilder()()["images"])
    cached_arrays("toy", build, root=tmp_path)  # the rewritten file is valid again
    assert build.calls == 2


def test_cached_arrays_rebuilds_a_truncated_cache_file(tmp_path: Path) -> None:
    build = CountingBuilder()
    cached_arrays("toy", build, root=tmp_path)
    cache_file = tmp_path / "toy.npz"
    cache_file.write_bytes(cache_file.read_bytes()[:-10])
    cached_arrays("toy", build, root=tmp_path)
    assert build.calls == 2


# --- downloads ---------------------------------------------------------------------------------


@pytest.fixture
def small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(3):
            archive.writestr(f"folder/item{index}.txt", f"payload {index}\n" * 200)
    return buffer.getvalue()


def unused_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/archive.zip"


def assert_empty_or_absent(directory: Path) -> None:
    leftovers = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    assert leftovers == [], f"download left files behind: {leftovers}"


def test_download_verifies_md5_and_writes_file(
    http_server, small_zip: bytes, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = http_server.serve("files/archive.zip", small_zip)
    resource = Resource("archive.zip", url, hashlib.md5(small_zip).hexdigest())
    path = fetch(resource, tmp_path / "data", progress=False)
    assert path == tmp_path / "data" / "archive.zip"
    assert path.read_bytes() == small_zip
    assert zipfile.ZipFile(path).namelist() == [f"folder/item{i}.txt" for i in range(3)]
    assert [p.name for p in path.parent.iterdir()] == ["archive.zip"]
    assert capsys.readouterr().err == ""  # progress disabled: no bar


def test_download_without_md5_accepts_any_content(http_server, small_zip: bytes,
                                                  tmp_path: Path) -> None:
    resource = Resource("archive.zip", http_server.serve("a.zip", small_zip))
    assert download(resource, tmp_path, progress=False).read_bytes() == small_zip


def test_download_checksum_mismatch_leaves_nothing(http_server, small_zip: bytes,
                                                   tmp_path: Path) -> None:
    resource = Resource("archive.zip", http_server.serve("a.zip", small_zip), "0" * 32)
    with pytest.raises(KShotError, match="checksum mismatch for archive.zip"):
        fetch(resource, tmp_path / "data", progress=False)
    assert_empty_or_absent(tmp_path / "data")


def test_truncated_download_leaves_nothing(http_server, small_zip: bytes, tmp_path: Path) -> None:
    url = http_server.serve("a.zip", small_zip, content_length=len(small_zip) + 1000)
    resource = Resource("archive.zip", url, hashlib.md5(small_zip).hexdigest())
    with pytest.raises(KShotError, match="truncated"):
        fetch(resource, tmp_path / "data", progress=False)
    assert_empty_or_absent(tmp_path / "data")


def test_unreachable_url_raises_kshot_error(tmp_path: Path) -> None:
    resource = Resource("archive.zip", unused_port_url(), "0" * 32)
    with pytest.raises(KShotError, match="could not download archive.zip"):
        fetch(resource, tmp_path / "data", progress=False)
    assert_empty_or_absent(tmp_path / "data")


def test_http_error_raises_kshot_error(http_server, tmp_path: Path) -> None:
    resource = Resource("archive.zip", http_server.url("missing.zip"))
    with pytest.raises(KShotError, match="could not download archive.zip.*Not Found"):
        fetch(resource, tmp_path / "data", progress=False)
    assert_empty_or_absent(tmp_path / "data")


def test_fetch_returns_existing_file_without_network(http_server, tmp_path: Path) -> None:
    existing = tmp_path / "archive.zip"
    existing.write_bytes(b"the user's own copy, re-packed")
    resource = Resource("archive.zip", http_server.url("archive.zip"), "0" * 32)
    assert fetch(resource, tmp_path) == existing
    assert fetch(resource, tmp_path, download_missing=False) == existing
    assert existing.read_bytes() == b"the user's own copy, re-packed"
    assert http_server.requests == []


def test_fetch_missing_without_downloads_raises(http_server, tmp_path: Path) -> None:
    resource = Resource("archive.zip", http_server.url("archive.zip"))
    with pytest.raises(KShotError, match="archive.zip is not in"):
        fetch(resource, tmp_path, download_missing=False)
    assert http_server.requests == []
