"""kshot.data.omniglot on the real archives: counts, splits, cache, bad archives, Lake's runs."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.data import omniglot
from kshot.data.omniglot import (
    ARCHIVES,
    check_archive,
    load_archive,
    load_lake_runs,
    load_omniglot,
)
from kshot.data.store import Resource, md5sum
from kshot.errors import KShotError

ARCHIVE_FILES = ["images_background.zip", "images_evaluation.zip", "images_background_small1.zip",
                 "images_background_small2.zip", "all_runs.zip"]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def omniglot_data(shared_data: Path) -> Path:
    """The data dir holding ``omniglot/`` with the official archives (skip if they are absent)."""
    for name in ARCHIVE_FILES:
        if not (shared_data / "omniglot" / name).is_file():
            pytest.skip(f"{name} is not in {shared_data / 'omniglot'}")
    return shared_data


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory: pytest.TempPathFactory, omniglot_data: Path) -> Path:
    """A session cache dir where the two main archives are decoded (at 28 px) once."""
    cache = tmp_path_factory.mktemp("omniglot-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(cache))
        for archive in ("images_background", "images_evaluation"):
            load_archive(archive, 28, omniglot_data, download=False, progress=False)
    return cache


@pytest.fixture
def cached(omniglot_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Use the session cache for this test."""
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(omniglot_cache))
    return omniglot_cache


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache dir for this test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(cache))
    return cache


def archive(name: str, data_dir: Path, image_size: int = 28):
    return load_archive(name, image_size, data_dir, download=False, progress=False)


def split(data_dir: Path, split_name: str, subset: str, **options):
    return load_omniglot(split_name, subset, data_dir=data_dir, download=False, progress=False,
                         **options)


@pytest.fixture(scope="module")
def archives(omniglot_cache: Path, omniglot_data: Path) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(omniglot_cache))
        return {name: archive(name, omniglot_data)
                for name in ("images_background", "images_evaluation")}


@pytest.fixture(scope="module")
def vinyals(omniglot_cache: Path, omniglot_data: Path) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(omniglot_cache))
        return {subset: split(omniglot_data, "vinyals", subset)
                for subset in ("train", "val", "test")}


@pytest.fixture(scope="module")
def lake(omniglot_cache: Path, omniglot_data: Path) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(omniglot_cache))
        return {subset: split(omniglot_data, "lake", subset)
                for subset in ("train", "val", "trainval", "test")}


@pytest.fixture(scope="module")
def lake_runs(tmp_path_factory: pytest.TempPathFactory, omniglot_data: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(tmp_path_factory.mktemp("lake-runs-cache")))
        return load_lake_runs(28, omniglot_data, download=False, progress=False)


def base_names(dataset) -> list[str]:
    """Class names without the ``@rotNN`` suffix of rotated classes."""
    return [name.split("@rot")[0] for name in dataset.class_names]


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) \
        if directory.exists() else []


# --- the archives ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_characters", "n_alphabets"),
    [("images_background", 964, 30), ("images_evaluation", 659, 20)],
)
def test_archive_counts_dtype_and_shape(archives: dict, name, n_characters, n_alphabets) -> None:
    dataset = archives[name]
    assert dataset.n_classes == n_characters
    assert len(set(dataset.meta["alphabets"])) == n_alphabets
    assert dataset.sizes.tolist() == [20] * n_characters
    assert len(dataset) == 20 * n_characters
    assert dataset.images.dtype == torch.uint8
    assert dataset.images.shape == (20 * n_characters, 1, 28, 28)
    assert dataset.name == f"omniglot/{name}" and dataset.meta["archive"] == name
    # class names are Alphabet/characterNN, sorted, and their alphabet is the meta entry
    assert list(dataset.class_names) == sorted(dataset.class_names)
    assert all(re.fullmatch(r"[^/]+/character\d\d", c) for c in dataset.class_names)
    assert [c.split("/")[0] for c in dataset.class_names] == dataset.meta["alphabets"]


@pytest.mark.parametrize("name", ["images_background", "images_evaluation"])
def test_archive_ink_is_bright_on_black(archives: dict, name) -> None:
    images = archives[name].images
    # measured: mean pixel ~20 at 28 px (strokes cover a small part of the image)
    assert 5 < float(images.float().mean()) < 40
    assert int(images.max()) == 255
    # the background is 0: the corners are empty in almost every image
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert float((corners == 0).float().mean()) > 0.95


def test_image_size_105_keeps_full_size_pixels(omniglot_data: Path, fresh_cache: Path) -> None:
    dataset = archive("images_background_small1", omniglot_data, image_size=105)
    assert dataset.images.shape[1:] == (1, 105, 105)
    assert len(set(dataset.meta["alphabets"])) == 5
    assert dataset.sizes.eq(20).all()
    # no resampling: the 1-bit PNGs stay two-valued, ink 255 on 0
    assert sorted(dataset.images.unique().tolist()) == [0, 255]
    assert float(dataset.images.float().mean()) < 40
    # the first image is the first PNG of the archive, inverted
    with zipfile.ZipFile(omniglot_data / "omniglot" / "images_background_small1.zip") as zf:
        first = min(n for n in zf.namelist()
                    if n.startswith(f"images_background_small1/{dataset.class_names[0]}/")
                    and n.endswith(".png"))
        pixels = np.asarray(Image.open(io.BytesIO(zf.read(first))).convert("L"))
    assert np.array_equal(dataset.images[0, 0].numpy(), 255 - pixels)


# --- the cache ---------------------------------------------------------------------------------


def test_second_load_decodes_nothing(cached: Path, omniglot_data: Path,
                                     monkeypatch: pytest.MonkeyPatch, archives: dict) -> None:
    size = (omniglot_data / "omniglot" / "images_background.zip").stat().st_size
    assert (cached / f"omniglot-images_background-28px-{size}.npz").is_file()
    assert not [p for p in cached.iterdir() if p.name.startswith(".tmp-")]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the arrays are cached")

    monkeypatch.setattr(omniglot, "_decode_archive", no_decoding)
    monkeypatch.setattr(omniglot, "decode_image", no_decoding)
    again = archive("images_background", omniglot_data)
    assert torch.equal(again.images, archives["images_background"].images)
    assert again.class_names == archives["images_background"].class_names
    assert split(omniglot_data, "lake", "test").n_classes == 659


def test_first_load_writes_one_cache_file(omniglot_data: Path, fresh_cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = archive("images_background_small2", omniglot_data)
    size = (omniglot_data / "omniglot" / "images_background_small2.zip").stat().st_size
    assert files_in(fresh_cache) == [f"omniglot-images_background_small2-28px-{size}.npz"]
    monkeypatch.setattr(omniglot, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    again = archive("images_background_small2", omniglot_data)
    assert torch.equal(first.images, again.images) and first.class_names == again.class_names


# --- splits ------------------------------------------------------------------------------------


def test_vinyals_split_sizes_and_rotations(vinyals: dict) -> None:
    for subset, n_characters in zip(("train", "val", "test"), (1028, 172, 423)):
        dataset = vinyals[subset]
        assert dataset.n_classes == 4 * n_characters, subset
        assert dataset.sizes.eq(20).all()
        assert dataset.images.shape[1:] == (1, 28, 28) and dataset.images.dtype == torch.uint8
        names = base_names(dataset)
        assert names[:n_characters] * 4 == names  # rotation r of character c is r * n + c
        assert len(set(names)) == n_characters
        assert [n.split("@rot")[1] for n in dataset.class_names] == \
            ["0"] * n_characters + ["90"] * n_characters + ["180"] * n_characters + \
            ["270"] * n_characters
        assert len(dataset.meta["alphabets"]) == dataset.n_classes
        assert (dataset.meta["split"], dataset.meta["subset"]) == ("vinyals", subset)


def test_vinyals_subsets_disjoint_and_cover_all_characters(vinyals: dict, archives: dict) -> None:
    train, val, test = (set(base_names(vinyals[s])) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    everything = set(archives["images_background"].class_names) | \
        set(archives["images_evaluation"].class_names)
    assert len(everything) == 1623
    assert train | val | test == everything


def published_vinyals(omniglot_data: Path, subset: str) -> set[str]:
    """The published split file of a subset, as kshot class names (``Alphabet/characterNN@rotR``)."""
    path = omniglot_data / "omniglot" / "splits" / "vinyals" / f"{subset}.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    names = set()
    for line in path.read_text().split():
        character, rotation = line.rsplit("/rot", 1)
        names.add(f"{character}@rot{int(rotation)}")
    return names


@pytest.mark.parametrize("subset", ["train", "val", "test", "trainval"])
def test_vinyals_is_the_published_split(omniglot_data: Path, vinyals: dict, cached: Path,
                                        subset: str) -> None:
    """Class by class, every part equals the file distributed with Snell et al.'s code."""
    dataset = vinyals[subset] if subset in vinyals else split(omniglot_data, "vinyals", subset)
    published = published_vinyals(omniglot_data, subset)
    assert len(dataset.class_names) == len(set(dataset.class_names))
    assert set(dataset.class_names) == published
    assert dataset.n_classes == {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}[subset]


def test_vinyals_is_split_by_alphabet(vinyals: dict) -> None:
    alphabets = {s: set(vinyals[s].meta["alphabets"]) for s in ("train", "val", "test")}
    assert alphabets["val"] == {"Armenian", "Bengali", "Early_Aramaic", "Hebrew",
                                "Mkhedruli_(Georgian)"}
    assert alphabets["train"] & alphabets["test"] == {"Gurmukhi"}  # split at character 42
    assert not alphabets["val"] & (alphabets["train"] | alphabets["test"])
    gurmukhi_test = {n.split("@")[0] for n in vinyals["test"].class_names if n.startswith("Gurm")}
    assert gurmukhi_test == {f"Gurmukhi/character{i}" for i in range(42, 46)}


def test_random_split_keeps_the_old_permutation(cached: Path, omniglot_data: Path,
                                                archives: dict) -> None:
    all_names = list(archives["images_background"].class_names) + \
        list(archives["images_evaluation"].class_names)
    permutation = np.random.default_rng(0).permutation(1623)
    test = split(omniglot_data, "random", "test")
    assert base_names(test)[:423] == [all_names[i] for i in np.sort(permutation[1200:])]
    assert test.n_classes == 4 * 423


def test_vinyals_items_are_the_archive_images_rotated(vinyals: dict, archives: dict) -> None:
    test = vinyals["test"]
    evaluation = archives["images_evaluation"]
    background = archives["images_background"]
    n = test.n_classes // 4
    for c in (0, n // 2, n - 1):
        name = test.class_names[c].split("@rot")[0]
        source = evaluation if name in evaluation.class_names else background
        original = source.class_items(source.class_names.index(name))
        for r in range(4):
            assert torch.equal(test.class_items(r * n + c), torch.rot90(original, r, dims=(2, 3)))


def test_lake_split(lake: dict, archives: dict) -> None:
    train, val, trainval, test = (lake[s] for s in ("train", "val", "trainval", "test"))
    counts = (train.n_classes, val.n_classes, trainval.n_classes, test.n_classes)
    assert counts == (864, 100, 964, 659)
    assert not set(train.class_names) & set(val.class_names)
    background = archives["images_background"]
    assert set(train.class_names) | set(val.class_names) == set(background.class_names)
    assert set(trainval.class_names) == set(background.class_names)
    # no rotations by default
    assert not any("@rot" in name for d in lake.values() for name in d.class_names)
    # test is the evaluation archive, item for item
    evaluation = archives["images_evaluation"]
    assert test.class_names == evaluation.class_names
    assert torch.equal(test.images, evaluation.images)
    assert test.meta["alphabets"] == evaluation.meta["alphabets"]
    # val is the documented slice of the background characters
    val_indices = np.sort(np.random.default_rng(0).permutation(964)[-100:])
    assert list(val.class_names) == [background.class_names[i] for i in val_indices]
    for c in (0, 99):
        source = background.class_names.index(val.class_names[c])
        assert torch.equal(val.class_items(c), background.class_items(source))


def test_lake_rotations_on_request(cached: Path, omniglot_data: Path, lake: dict) -> None:
    rotated = split(omniglot_data, "lake", "train", rotations=True)
    assert rotated.n_classes == 4 * 864 and len(rotated) == 4 * len(lake["train"])
    assert base_names(rotated) == list(lake["train"].class_names) * 4
    plain = split(omniglot_data, "vinyals", "train", rotations=False)
    assert plain.n_classes == 1028


@pytest.mark.parametrize("rotations", [True, False, None])
def test_training_rotations_never_change_val_or_test(cached: Path, omniglot_data: Path,
                                                     lake: dict, vinyals: dict, rotations) -> None:
    """A split defines its test set: the training flag leaves val and test as published."""
    for name, reference in (("lake", lake), ("vinyals", vinyals)):
        for subset in ("val", "test"):
            dataset = split(omniglot_data, name, subset, rotations=rotations)
            assert dataset.class_names == reference[subset].class_names, (name, subset)
    assert lake["test"].n_classes == 659 and not lake["test"].meta["rotations"]
    assert vinyals["test"].meta["rotations"]


def test_test_rotations_are_an_evaluation_option(cached: Path, omniglot_data: Path,
                                                 lake: dict) -> None:
    rotated = split(omniglot_data, "lake", "test", test_rotations=True)
    assert rotated.n_classes == 4 * 659 and rotated.meta["rotations"]
    plain = split(omniglot_data, "vinyals", "test", test_rotations=False)
    assert plain.n_classes == 423 and not plain.meta["rotations"]


def test_split_permutation_is_fixed(cached: Path, omniglot_data: Path, lake: dict,
                                    vinyals: dict) -> None:
    again_lake = split(omniglot_data, "lake", "val")
    assert again_lake.class_names == lake["val"].class_names
    assert torch.equal(again_lake.images, lake["val"].images)
    again_vinyals = split(omniglot_data, "vinyals", "val")
    assert again_vinyals.class_names == vinyals["val"].class_names
    assert torch.equal(again_vinyals.images, vinyals["val"].images)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d: load_omniglot("imagenet", "train", data_dir=d), "unknown Omniglot split"),
        (lambda d: load_omniglot("lake", "validation", data_dir=d), "unknown subset"),
        (lambda d: load_archive("images_small3", data_dir=d), "unknown Omniglot archive"),
        (lambda d: load_archive("images_background", image_size=2, data_dir=d), "too small"),
    ],
)
def test_unknown_split_subset_or_archive(tmp_path: Path, fresh_cache: Path, call, match) -> None:
    with pytest.raises(KShotError, match=match):
        call(tmp_path)
    assert files_in(tmp_path) == []


def test_missing_archive_without_download(tmp_path: Path, fresh_cache: Path) -> None:
    with pytest.raises(KShotError, match="images_background.zip is not in"):
        load_archive("images_background", data_dir=tmp_path, download=False)


# --- check_archive -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*ARCHIVES, "all_runs"])
def test_check_archive_accepts_the_real_files(omniglot_data: Path, name: str) -> None:
    assert check_archive(omniglot_data / "omniglot" / f"{name}.zip", name) is True


def test_check_archive_describes_bad_files(tmp_path: Path, omniglot_data: Path) -> None:
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes((omniglot_data / "omniglot" / "all_runs.zip").read_bytes()[:5000])
    problem = check_archive(truncated, "all_runs")
    assert isinstance(problem, str) and "not a readable zip" in problem
    # the real small archive is not the full background archive
    problem = check_archive(omniglot_data / "omniglot" / "images_background_small1.zip",
                            "images_background")
    assert isinstance(problem, str) and "no images_background/" in problem
    few_runs = make_zip(tmp_path / "runs.zip",
                        {f"run0{i}/class_labels.txt": b"" for i in (1, 2, 3)})
    assert check_archive(few_runs, "all_runs") == "3 runs with class_labels.txt, expected 20"


# --- corrupt and wrong archives ----------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes],
             compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def png_bytes(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 2, (size, size), dtype=np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def small_archive_members() -> dict[str, bytes]:
    """A structurally valid images_background_small1.zip: 5 alphabets x 1 character x 20 PNGs."""
    return {f"images_background_small1/Alphabet{a}/character01/{a:02d}{d:02d}_{d:02d}.png":
            png_bytes(a * 20 + d) for a in range(5) for d in range(1, 21)}


def member_data_offset(path: Path, member: str) -> tuple[int, int]:
    """Byte offset and length of ``member``'s (compressed) data inside the zip at ``path``."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    header = path.read_bytes()[info.header_offset : info.header_offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def corrupt_member(path: Path, member: str, how: str) -> None:
    """``flip``: invert one data byte mid-member (a CRC error when stored); ``deflate``: make the
    deflate stream start with the reserved block type (a zlib error when read)."""
    offset, length = member_data_offset(path, member)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[offset + length // 2] ^= 0xFF
    else:
        data[offset] = 0xFF  # BFINAL=1, BTYPE=11 (reserved)
    path.write_bytes(bytes(data))


def assert_clean_failure(error: pytest.ExceptionInfo, path: Path, cache: Path) -> None:
    message = str(error.value)
    assert str(path) in message and "delete" in message
    leftovers = [p for p in files_in(cache) if p.endswith(".npz") or ".tmp-" in p]
    assert leftovers == []


def test_truncated_lake_runs_archive(omniglot_data: Path, tmp_path: Path,
                                     fresh_cache: Path) -> None:
    target = tmp_path / "data" / "omniglot" / "all_runs.zip"
    target.parent.mkdir(parents=True)
    real = (omniglot_data / "omniglot" / "all_runs.zip").read_bytes()
    target.write_bytes(real[: len(real) // 2])
    with pytest.raises(KShotError) as error:
        load_lake_runs(data_dir=tmp_path / "data", download=False, progress=False)
    assert_clean_failure(error, target, fresh_cache)
    assert target.read_bytes() == real[: len(real) // 2]  # the user's file is left alone


@pytest.mark.parametrize("as_name", ["images_background_small1", "images_background"])
def test_truncated_images_archive(omniglot_data: Path, tmp_path: Path, fresh_cache: Path,
                                  as_name: str) -> None:
    target = tmp_path / "data" / "omniglot" / f"{as_name}.zip"
    target.parent.mkdir(parents=True)
    real = (omniglot_data / "omniglot" / "images_background_small1.zip").read_bytes()
    target.write_bytes(real[: len(real) * 2 // 3])
    with pytest.raises(KShotError) as error:
        load_archive(as_name, data_dir=tmp_path / "data", download=False, progress=False)
    assert_clean_failure(error, target, fresh_cache)


def test_synthetic_small_archive_loads(tmp_path: Path, fresh_cache: Path) -> None:
    make_zip(tmp_path / "omniglot" / "images_background_small1.zip", small_archive_members())
    dataset = archive("images_background_small1", tmp_path, image_size=8)
    assert dataset.n_classes == 5 and dataset.images.shape == (100, 1, 8, 8)
    assert np.array_equal(dataset.images[0, 0].numpy(),
                          255 - np.asarray(Image.open(io.BytesIO(png_bytes(1)))))


def test_corrupt_member_of_images_archive(tmp_path: Path, fresh_cache: Path) -> None:
    members = small_archive_members()
    target = make_zip(tmp_path / "omniglot" / "images_background_small1.zip", members,
                      zipfile.ZIP_STORED)
    corrupt_member(target, sorted(members)[25], "flip")
    with pytest.raises(KShotError, match="is corrupt") as error:
        archive("images_background_small1", tmp_path)
    assert_clean_failure(error, target, fresh_cache)


def test_broken_deflate_stream_in_images_archive(tmp_path: Path, fresh_cache: Path) -> None:
    members = small_archive_members()
    target = make_zip(tmp_path / "omniglot" / "images_background_small1.zip", members)
    corrupt_member(target, sorted(members)[25], "deflate")
    try:
        archive("images_background_small1", tmp_path)
    except KShotError as error:
        assert str(target) in str(error) and "delete" in str(error)
        assert files_in(fresh_cache) == []
    else:
        pytest.fail("no error for a corrupt archive")


@pytest.mark.parametrize("how", ["flip", "deflate"])
def test_corrupt_member_of_lake_runs_archive(omniglot_data: Path, tmp_path: Path,
                                             fresh_cache: Path, how: str) -> None:
    with zipfile.ZipFile(omniglot_data / "omniglot" / "all_runs.zip") as zf:
        members = {name: zf.read(name) for name in zf.namelist() if not name.endswith("/")}
    # stored members make a flipped byte a certain CRC error; deflated ones a zlib error
    compression = zipfile.ZIP_STORED if how == "flip" else zipfile.ZIP_DEFLATED
    target = make_zip(tmp_path / "omniglot" / "all_runs.zip", members, compression)
    corrupt_member(target, "run01/test/item01.png", how)
    try:
        load_lake_runs(data_dir=tmp_path, download=False, progress=False)
    except KShotError as error:
        assert str(target) in str(error) and "delete" in str(error)
        assert files_in(fresh_cache) == []
    else:
        pytest.fail("no error for a corrupt archive")


def test_images_archive_with_wrong_structure(tmp_path: Path, fresh_cache: Path) -> None:
    members = {f"images_background/Greek/character01/01{d:02d}.png": png_bytes(d) for d in range(3)}
    target = make_zip(tmp_path / "omniglot" / "images_background.zip", members)
    with pytest.raises(KShotError, match="does not look like the official images_background.zip"
                       ) as error:
        archive("images_background", tmp_path)
    message = str(error.value)
    assert "1 alphabets, expected 30" in message and "1 characters, expected 964" in message
    assert "without 20 images" in message
    assert_clean_failure(error, target, fresh_cache)
    assert isinstance(check_archive(target, "images_background"), str)

    # a zip of something else entirely
    make_zip(target, {"readme.txt": b"hello"})
    with pytest.raises(KShotError, match="no images_background/<Alphabet>/<character>/\\*.png"):
        archive("images_background", tmp_path)


def test_lake_runs_archive_with_wrong_structure(tmp_path: Path, fresh_cache: Path) -> None:
    target = make_zip(tmp_path / "omniglot" / "all_runs.zip", {"readme.txt": b"hello"})
    with pytest.raises(KShotError, match="has no run01/class_labels.txt") as error:
        load_lake_runs(data_dir=tmp_path, download=False, progress=False)
    assert_clean_failure(error, target, fresh_cache)
    make_zip(target, {"run01/class_labels.txt": b"something else\n"})
    with pytest.raises(KShotError, match="unexpected line"):
        load_lake_runs(data_dir=tmp_path, download=False, progress=False)
    assert files_in(fresh_cache) == []


# --- Lake's runs -------------------------------------------------------------------------------


def parse_class_labels(path: Path) -> np.ndarray:
    """``[20 runs, 20 test items]`` 0-based training class of each test item, parsed here."""
    labels = np.full((20, 20), -1)
    with zipfile.ZipFile(path) as zf:
        for run in range(20):
            text = zf.read(f"run{run + 1:02d}/class_labels.txt").decode()
            for line in text.splitlines():
                if line.strip():
                    test_image, training_image = line.split()
                    item = int(test_image.rsplit("item", 1)[1].split(".")[0])
                    label = int(training_image.rsplit("class", 1)[1].split(".")[0]) - 1
                    labels[run, item - 1] = label
    return labels


def test_lake_runs_shapes_and_labels(lake_runs, omniglot_data: Path) -> None:
    assert lake_runs.training.shape == (20, 20, 1, 28, 28)
    assert lake_runs.test.shape == (20, 20, 1, 28, 28)
    assert lake_runs.training.dtype == lake_runs.test.dtype == torch.uint8
    assert lake_runs.test_labels.shape == (20, 20)
    # every run's test set has exactly one image of each training class
    for run in range(20):
        assert sorted(lake_runs.test_labels[run].tolist()) == list(range(20))
    expected = parse_class_labels(omniglot_data / "omniglot" / "all_runs.zip")
    assert lake_runs.test_labels[0, 0].item() == 7  # run01/test/item01.png -> class08.png
    assert np.array_equal(lake_runs.test_labels.numpy(), expected)
    assert 5 < float(lake_runs.training.float().mean()) < 40  # ink bright on 0


def test_lake_runs_at_105_are_the_pngs_inverted(omniglot_data: Path, fresh_cache: Path) -> None:
    runs = load_lake_runs(105, omniglot_data, download=False, progress=False)
    assert runs.training.shape == runs.test.shape == (20, 20, 1, 105, 105)
    with zipfile.ZipFile(omniglot_data / "omniglot" / "all_runs.zip") as zf:
        for folder, name, tensor in (("training", "class", runs.training),
                                     ("test", "item", runs.test)):
            png = zf.read(f"run03/{folder}/{name}05.png")
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
            assert np.array_equal(tensor[2, 4, 0].numpy(), 255 - pixels)


def test_lake_runs_download(http_server, omniglot_data: Path, tmp_path: Path, fresh_cache: Path,
                            monkeypatch: pytest.MonkeyPatch, lake_runs) -> None:
    real = omniglot_data / "omniglot" / "all_runs.zip"
    url = http_server.serve("omniglot/all_runs.zip", real.read_bytes())
    monkeypatch.setattr(omniglot, "LAKE_RUNS", Resource("omniglot/all_runs.zip", url, md5sum(real)))
    data = tmp_path / "data"
    runs = load_lake_runs(data_dir=data, progress=False)
    assert files_in(data) == ["omniglot/all_runs.zip"]
    assert (data / "omniglot" / "all_runs.zip").read_bytes() == real.read_bytes()
    assert http_server.requests == ["/omniglot/all_runs.zip"]
    for field in ("training", "test", "test_labels"):
        assert torch.equal(getattr(runs, field), getattr(lake_runs, field))
    load_lake_runs(data_dir=data, progress=False)  # present now: no second download
    assert len(http_server.requests) == 1


def test_lake_runs_download_with_wrong_md5(http_server, omniglot_data: Path, tmp_path: Path,
                                           fresh_cache: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    body = (omniglot_data / "omniglot" / "all_runs.zip").read_bytes()
    url = http_server.serve("all_runs.zip", body)
    monkeypatch.setattr(omniglot, "LAKE_RUNS", Resource("omniglot/all_runs.zip", url, "0" * 32))
    data = tmp_path / "data"
    with pytest.raises(KShotError, match="checksum mismatch for omniglot/all_runs.zip"):
        load_lake_runs(data_dir=data, progress=False)
    assert files_in(data) == []
    assert files_in(fresh_cache) == []
