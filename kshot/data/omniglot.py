"""Omniglot (Lake et al. 2015): the official archives, the `lake` and `vinyals` splits, Lake's 20 runs.

Archives (official names and layout, ``images_background/<Alphabet>/<characterNN>/<id>_<drawer>.png``):

* ``images_background.zip``: 30 alphabets, 964 characters × 20 drawers;
* ``images_evaluation.zip``: 20 alphabets, 659 characters × 20 drawers;
* ``images_background_small1.zip`` / ``images_background_small2.zip``: the 5-alphabet "minimal" splits;
* ``all_runs.zip``: Lake's one-shot benchmark (20 runs of 20-way, 1 training image per class).

Images are decoded once (ink bright on 0, area-resampled to the requested size) and cached as
``.npz`` in the cache directory.

Splits (each with ``train`` / ``val`` / ``test`` subsets, and ``trainval`` = train + val):

* ``lake``: train on the 30 background alphabets, test on the 20 evaluation alphabets. Validation is
  a fixed slice of 100 background characters: ``numpy.random.default_rng(0).permutation(964)[-100:]``.
* ``small1`` / ``small2``: Lake et al.'s "minimal" 5-alphabet background sets (136 / 156 characters,
  each with a fixed 10% validation slice, ``default_rng(0).permutation``) against the 20 evaluation
  alphabets.
* ``vinyals``: the split of Vinyals et al. 2016 as distributed with Snell et al.'s code and used by
  every paper that reports on it, by alphabet: ``test`` = Gurmukhi character42-character45 and the
  13 alphabets of ``VINYALS_TEST_ALPHABETS`` (423 characters); ``val`` = the 5 alphabets of
  ``VINYALS_VAL_ALPHABETS`` (172); ``train`` = every other character (1028). Each character rotated
  by 90/180/270° is a new class in all three parts (4112 / 688 / 1692 classes), as published.
* ``random``: all 1623 characters permuted by ``numpy.random.default_rng(0).permutation(1623)``,
  1028 / 172 / 423: unseen characters of *seen* alphabets (easier than ``vinyals``; kept only to
  compare with kshot's earlier figures).

A split defines its test set: rotations of ``test`` (and of ``val``, which selects checkpoints) are
the split's convention (on for ``vinyals`` and ``random``, off for ``lake`` / ``small*``); the
``rotations`` argument changes the training subsets only, unless ``test_rotations`` is given.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kshot.data.dataset import ClassDataset
from kshot.data.images import decode_image
from kshot.data.store import Resource, cached_arrays, fetch
from kshot.errors import KShotError

_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"

#: name -> (resource, expected alphabets, expected characters); MD5 of the official downloads where
#: published (torchvision's), otherwise only the structural check applies.
ARCHIVES: dict[str, tuple[Resource, int | None, int | None]] = {
    "images_background": (
        Resource("omniglot/images_background.zip", _BASE + "images_background.zip",
                 "68d2efa1b9178cc56df9314c21c6e718"), 30, 964),
    "images_evaluation": (
        Resource("omniglot/images_evaluation.zip", _BASE + "images_evaluation.zip",
                 "6b91aef0f799c5bb55b94e3f2daec811"), 20, 659),
    "images_background_small1": (
        Resource("omniglot/images_background_small1.zip", _BASE + "images_background_small1.zip"), 5, None),
    "images_background_small2": (
        Resource("omniglot/images_background_small2.zip", _BASE + "images_background_small2.zip"), 5, None),
}
LAKE_RUNS = Resource("omniglot/all_runs.zip", _BASE + "one-shot-classification/all_runs.zip")
DRAWERS_PER_CHARACTER = 20
VINYALS_SIZES = (1028, 172, 423)
VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG")
"""Evaluation alphabets wholly in the test part of the ``vinyals`` split (with Gurmukhi 42-45)."""
VINYALS_TEST_GURMUKHI_FROM = 42
"""Gurmukhi characters from this number on are test characters of ``vinyals``; those before, train."""
VINYALS_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
"""Background alphabets that make up the validation part of the ``vinyals`` split."""
LAKE_VAL_CHARACTERS = 100
SPLITS = ("lake", "vinyals", "small1", "small2", "random")
ROTATED_SPLITS = ("vinyals", "random")
"""Splits whose published validation and test sets hold every character at 4 rotations."""
SUBSETS = ("train", "val", "trainval", "test")

_ITEM = re.compile(r"^(images_[a-z0-9_]+)/([^/]+)/(character\d+)/([^/]+\.png)$")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KShotError(
            f"{path} is not a readable zip archive ({exc}); delete it so it is downloaded again, "
            "or replace it with the official file"
        ) from None


def _read_member(zf: zipfile.ZipFile, path: Path, member: str) -> bytes:
    """The bytes of one archive member; a damaged member is a user error naming the fix."""
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise KShotError(f"{path} is corrupt ({member}: {exc}); delete it so it is downloaded "
                         "again") from None


def _archive_characters(zf: zipfile.ZipFile, path: Path, archive: str) -> dict[str, list[str]]:
    """Character name -> its PNG members, after checking the archive's structure (names, counts)."""
    expected_alphabets, expected_characters = ARCHIVES[archive][1:]
    by_character: dict[str, list[str]] = defaultdict(list)
    for member in zf.namelist():
        match = _ITEM.match(member)
        if match and match.group(1) == archive:
            by_character[f"{match.group(2)}/{match.group(3)}"].append(member)
    characters = sorted(by_character)
    alphabets = {name.split("/")[0] for name in characters}
    problems = []
    if not characters:
        problems.append(f"no {archive}/<Alphabet>/<character>/*.png entries")
    if expected_alphabets is not None and len(alphabets) != expected_alphabets:
        problems.append(f"{len(alphabets)} alphabets, expected {expected_alphabets}")
    if expected_characters is not None and len(characters) != expected_characters:
        problems.append(f"{len(characters)} characters, expected {expected_characters}")
    short = [c for c in characters if len(by_character[c]) != DRAWERS_PER_CHARACTER]
    if short:
        problems.append(f"{len(short)} characters without {DRAWERS_PER_CHARACTER} images "
                        f"(e.g. {short[0]})")
    if problems:
        raise KShotError(f"{path} does not look like the official {archive}.zip: "
                         f"{'; '.join(problems)}; delete it so it is downloaded again")
    return {c: sorted(by_character[c]) for c in characters}


def check_archive(path: str | Path, name: str) -> bool | str:
    """True when ``path`` passes the structural check of archive ``name``, else the problem."""
    try:
        with _open_zip(Path(path)) as zf:
            if name in ARCHIVES:
                _archive_characters(zf, Path(path), name)
            elif name == "all_runs":
                labels = [n for n in zf.namelist() if n.endswith("class_labels.txt")]
                if len(labels) != 20:
                    return f"{len(labels)} runs with class_labels.txt, expected 20"
            else:
                return f"no structural check is known for {name!r}"
        return True
    except KShotError as error:
        return str(error)


def _decode_archive(path: Path, archive: str, image_size: int) -> dict[str, np.ndarray]:
    """Decode every image of one archive, checking its structure (names and counts)."""
    with _open_zip(path) as zf:
        by_character = _archive_characters(zf, path, archive)
        characters = list(by_character)
        images = np.empty((len(characters) * DRAWERS_PER_CHARACTER, image_size, image_size), np.uint8)
        row = 0
        for character in characters:
            for member in by_character[character]:
                data = _read_member(zf, path, member)
                images[row] = decode_image(data, image_size, invert=True, name=f"{path}:{member}")
                row += 1
    return {"images": images, "characters": np.array(characters)}


def load_archive(
    archive: str = "images_background",
    image_size: int = 28,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> ClassDataset:
    """One Omniglot archive as a ClassDataset of characters (``Alphabet/characterNN``), 20 images each."""
    if archive not in ARCHIVES:
        raise KShotError(f"unknown Omniglot archive {archive!r}; choose one of {sorted(ARCHIVES)}")
    if image_size < 4:
        raise KShotError(f"image size {image_size} is too small; use e.g. 28 or 105")
    path = fetch(ARCHIVES[archive][0], data_dir, download_missing=download, progress=progress)
    stat = path.stat()
    key = f"omniglot-{archive}-{image_size}px-{stat.st_size}"
    arrays = cached_arrays(key, lambda: _decode_archive(path, archive, image_size))
    characters = [str(c) for c in arrays["characters"]]
    images = torch.from_numpy(arrays["images"]).unsqueeze(1)  # [items, 1, S, S]
    offsets = torch.arange(len(characters) + 1) * DRAWERS_PER_CHARACTER
    meta = {"alphabets": [c.split("/")[0] for c in characters], "archive": archive,
            "namespace": "omniglot"}
    return ClassDataset(images, offsets, tuple(characters), f"omniglot/{archive}", meta)


def _vinyals_part(character: str) -> str:
    """``train``, ``val`` or ``test``: the part of the published Vinyals split a character is in."""
    alphabet, name = character.split("/")
    if alphabet in VINYALS_VAL_ALPHABETS:
        return "val"
    if alphabet in VINYALS_TEST_ALPHABETS:
        return "test"
    if alphabet == "Gurmukhi" and int(name.removeprefix("character")) >= VINYALS_TEST_GURMUKHI_FROM:
        return "test"
    return "train"


def _subset_classes(split: str, subset: str, characters: list[str], n_background: int) -> np.ndarray:
    """Character indices (into ``characters``: background then evaluation) of a subset of a split."""
    n_total = len(characters)
    if split == "vinyals":
        parts = np.array([_vinyals_part(c) for c in characters])
        train, val, test = (np.flatnonzero(parts == part) for part in ("train", "val", "test"))
        if (len(train), len(val), len(test)) != VINYALS_SIZES:
            raise KShotError(f"the vinyals split needs the official archives: got {len(train)} / "
                             f"{len(val)} / {len(test)} characters, expected {VINYALS_SIZES}")
    elif split == "random":
        permutation = np.random.default_rng(0).permutation(n_total)
        n_train, n_val, _ = VINYALS_SIZES
        train = np.sort(permutation[:n_train])
        val = np.sort(permutation[n_train : n_train + n_val])
        test = np.sort(permutation[n_train + n_val :])
    else:
        n_val = LAKE_VAL_CHARACTERS if split == "lake" else max(1, n_background // 10)
        permutation = np.random.default_rng(0).permutation(n_background)
        val = np.sort(permutation[-n_val:])
        train = np.sort(permutation[:-n_val])
        test = np.arange(n_background, n_total)
    return {"train": train, "val": val, "trainval": np.sort(np.concatenate([train, val])),
            "test": test}[subset]


def load_omniglot(
    split: str = "vinyals",
    subset: str = "train",
    image_size: int = 28,
    rotations: bool | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
    test_rotations: bool | None = None,
) -> ClassDataset:
    """One subset of an Omniglot split (see the module docstring for the definitions).

    ``rotations`` adds each character rotated by 90/180/270° as new classes to the *training*
    subsets (``train``, ``trainval``); ``None`` means the split's convention. ``val`` and ``test``
    always follow the split (rotated for ``vinyals``), except that ``test_rotations`` (an evaluation
    option, never a training flag) may set the test set's rotations explicitly.
    """
    if split not in SPLITS:
        raise KShotError(f"unknown Omniglot split {split!r}; choose one of {list(SPLITS)}")
    if subset not in SUBSETS:
        raise KShotError(f"unknown subset {subset!r}; choose one of {list(SUBSETS)}")
    archive = f"images_background_{split}" if split.startswith("small") else "images_background"
    background = load_archive(archive, image_size, data_dir, download, progress)
    need_evaluation = split in ROTATED_SPLITS or subset == "test"
    if need_evaluation:
        evaluation = load_archive("images_evaluation", image_size, data_dir, download, progress)
        both = ClassDataset(
            torch.cat([background.images, evaluation.images]),
            torch.cat([background.offsets, background.offsets[-1] + evaluation.offsets[1:]]),
            background.class_names + evaluation.class_names,
            "omniglot",
            {"alphabets": background.meta["alphabets"] + evaluation.meta["alphabets"]},
        )
    else:
        both = background
    classes = _subset_classes(split, subset, list(both.class_names), background.n_classes)
    dataset = both.subset(torch.from_numpy(classes), name=f"omniglot/{split}/{subset}")
    alphabets = both.meta["alphabets"]
    dataset.meta["alphabets"] = [alphabets[int(c)] for c in classes]
    convention = split in ROTATED_SPLITS
    if subset in ("train", "trainval"):
        rotate = convention if rotations is None else rotations
    elif subset == "test" and test_rotations is not None:
        rotate = test_rotations
    else:
        rotate = convention
    if rotate:
        dataset = dataset.with_rotations()
        dataset.meta["alphabets"] = dataset.meta["alphabets"] * 4
    dataset.meta.update(split=split, subset=subset, image_size=image_size, rotations=bool(rotate),
                        namespace="omniglot")
    return dataset


@dataclass(frozen=True)
class LakeRuns:
    """Lake's 20 one-shot runs: ``training`` [20 runs, 20 classes, 1, S, S] (class01..class20),
    ``test`` [20, 20, 1, S, S] (item01..item20) and ``test_labels`` [20, 20]: the training class
    (0-based) of every test item, from ``class_labels.txt``."""

    training: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


_RUN_LINE = re.compile(r"^(run\d+)/test/item(\d+)\.png\s+(run\d+)/training/class(\d+)\.png$")


def _decode_runs(path: Path, image_size: int) -> dict[str, np.ndarray]:
    training = np.empty((20, 20, image_size, image_size), np.uint8)
    test = np.empty_like(training)
    labels = np.full((20, 20), -1, np.int64)
    with _open_zip(path) as zf:
        names = set(zf.namelist())
        for run in range(20):
            prefix = f"run{run + 1:02d}"
            label_file = f"{prefix}/class_labels.txt"
            if label_file not in names:
                raise KShotError(f"{path} has no {label_file}; it is not Lake's all_runs.zip - "
                                 "delete it so it is downloaded again")
            for line in _read_member(zf, path, label_file).decode(errors="replace").split("\n"):
                if not line.strip():
                    continue
                match = _RUN_LINE.match(line.strip())
                if not match or match.group(1) != prefix:
                    raise KShotError(f"{path}: unexpected line {line!r} in {label_file}")
                labels[run, int(match.group(2)) - 1] = int(match.group(4)) - 1
            for index in range(20):
                for folder, name, out in (("training", "class", training), ("test", "item", test)):
                    member = f"{prefix}/{folder}/{name}{index + 1:02d}.png"
                    if member not in names:
                        raise KShotError(f"{path} lacks {member}; delete it so it is downloaded again")
                    out[run, index] = decode_image(_read_member(zf, path, member), image_size, invert=True,
                                                   name=f"{path}:{member}")
    if (labels < 0).any() or (labels > 19).any():
        raise KShotError(f"{path}: class_labels.txt files do not label all 20 test items of each run")
    return {"training": training, "test": test, "labels": labels}


def load_lake_runs(
    image_size: int = 28,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> LakeRuns:
    """Lake's 20 within-alphabet one-shot runs, decoded at ``image_size``."""
    path = fetch(LAKE_RUNS, data_dir, download_missing=download, progress=progress)
    key = f"omniglot-all_runs-{image_size}px-{path.stat().st_size}"
    arrays = cached_arrays(key, lambda: _decode_runs(path, image_size))
    return LakeRuns(
        torch.from_numpy(arrays["training"]).unsqueeze(2),
        torch.from_numpy(arrays["test"]).unsqueeze(2),
        torch.from_numpy(arrays["labels"]),
    )
