"""Data sets by name: one entry point from the CLI's ``--dataset/--split`` to a ClassDataset.

Every data set has held-out classes, so a run is never scored on the classes it learned:

* ``omniglot``: ``vinyals`` (default; the published split), ``lake``, ``small1``, ``small2``,
  ``random`` (see :mod:`kshot.data.omniglot`).
* ``mnist`` and ``digits``: ``heldout`` (default): digits 0-4 are ``train`` (and ``trainval``),
  digits 5-9 are ``test``; there is no ``val`` part. ``all``: every subset is all ten digits, for
  scoring a run trained on *another* data set (Koch et al.'s 10-way MNIST test); a run trained on
  ``all`` is refused on it by the overlap guard. MNIST episodes come from the official test file
  (10,000 images, the one every machine of this project has).
* ``folder``: ``heldout`` (default): the class folders, sorted by name and permuted by
  ``numpy.random.default_rng(0)``; the last fifth (at least one) are ``test``, the rest ``train``.
  ``all``: every class in every subset (score a run on another folder with
  ``kshot eval RUN --dataset folder --folder OTHER --split all``).
* ``iris``: three classes cannot be split: ``all`` only; iris is the chapter-1 demo's data, and the
  overlap guard refuses to score an iris run on iris.

Every data set's ``meta["namespace"]`` names it; with the class names that gives the stable class
ids (:func:`kshot.protocol.class_ids`) that runs record and the guard compares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kshot.data.dataset import ClassDataset
from kshot.errors import KShotError

DATASETS = ("omniglot", "mnist", "digits", "iris", "folder")
DEFAULT_SPLITS = {"omniglot": "vinyals", "mnist": "heldout", "digits": "heldout",
                  "folder": "heldout", "iris": "all"}
CLASS_SPLITS = {"mnist": ("heldout", "all"), "digits": ("heldout", "all"),
                "folder": ("heldout", "all"), "iris": ("all",)}
"""The splits of the data sets that are not Omniglot."""
DIGIT_TRAIN_CLASSES = 5
"""``heldout`` split of mnist and digits: classes 0..4 train, 5..9 test."""
FOLDER_TEST_SHARE = 0.2
"""``heldout`` split of folder data: the share of classes held out for testing."""


SPLIT_DESCRIPTIONS: dict[str, str] = {
    "omniglot/vinyals": "published (Vinyals et al.): train 1028 characters x4 rotations, val 5 "
                        "background alphabets (172 x4), test Gurmukhi 42-45 + 12 evaluation "
                        "alphabets (423 x4 = 1692 classes)",
    "omniglot/lake": "train 864 background characters, val the other 100, test the 659 "
                     "evaluation characters (unrotated)",
    "omniglot/small1, small2": "Lake's 5-alphabet background sets (90% train, 10% val), test the "
                               "659 evaluation characters",
    "omniglot/random": "1623 characters permuted (seed 0): 1028 / 172 / 423, x4 rotations; unseen "
                       "characters of seen alphabets",
    "mnist/heldout, digits/heldout": "train digits 0-4, test digits 5-9 (no val)",
    "folder/heldout": "train 4/5 of the class folders, test the other fifth (default_rng(0))",
    "mnist/all, digits/all, folder/all, iris/all": "every class in every subset: a transfer target "
                                                   "for runs trained on another data set",
}
"""What each split trains, validates and tests on (``kshot datasets`` prints it)."""


def load_dataset(
    dataset: str,
    split: str | None = None,
    subset: str = "train",
    image_size: int = 28,
    rotations: bool | None = None,
    data_dir: str | Path | None = None,
    folder: str | Path | None = None,
    progress: bool = True,
    test_rotations: bool | None = None,
) -> ClassDataset:
    """One subset (``train``, ``val``, ``trainval``, ``test``) of a split of a named data set.

    ``rotations`` (Omniglot) augments the training subsets only; ``test_rotations`` (an evaluation
    option) sets the rotations of the Omniglot test set, which otherwise follow the split.
    """
    if dataset not in DATASETS:
        raise KShotError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    split = split or DEFAULT_SPLITS[dataset]
    if dataset == "omniglot":
        from kshot.data.omniglot import load_omniglot

        return load_omniglot(split, subset, image_size, rotations, data_dir, progress=progress,
                             test_rotations=test_rotations)
    if split not in CLASS_SPLITS[dataset]:
        raise KShotError(f"unknown split {split!r} of {dataset}; choose one of "
                         f"{list(CLASS_SPLITS[dataset])}")
    if subset not in ("train", "val", "trainval", "test"):
        raise KShotError(f"unknown subset {subset!r}; choose train, val, trainval or test")
    if dataset == "mnist":
        from kshot.data.mnist import load_mnist

        data = _resized(load_mnist("test", data_dir=data_dir, progress=progress), image_size)
    elif dataset == "digits":
        from kshot.data.toy import load_digits

        data = load_digits()
    elif dataset == "iris":
        from kshot.data.toy import load_iris

        data = load_iris()
    else:
        from kshot.data.folder import load_folder

        if not folder:
            raise KShotError("--dataset folder needs --folder PATH (a folder of class sub-folders)")
        data = load_folder(folder, image_size)
    classes = held_out_classes(dataset, split, subset, data.n_classes)
    if classes is None:
        raise KShotError(f"{dataset}/{split} has no {subset} part; train on train (the held-out "
                         "split has no validation classes)")
    part = data.subset(torch.from_numpy(classes), name=f"{dataset}/{split}/{subset}")
    part.meta.update(dataset=dataset, split=split, subset=subset, namespace=dataset)
    return part


def held_out_classes(dataset: str, split: str, subset: str, n_classes: int) -> np.ndarray | None:
    """Class indices of one subset of a non-Omniglot split (``None``: the split has no such part)."""
    every = np.arange(n_classes)
    if split == "all":
        return every
    if dataset in ("mnist", "digits"):
        train, test = every[:DIGIT_TRAIN_CLASSES], every[DIGIT_TRAIN_CLASSES:]
    else:
        n_test = max(1, round(n_classes * FOLDER_TEST_SHARE))
        if n_classes < 2:
            raise KShotError(f"a folder of {n_classes} class cannot hold classes out; use --split "
                             "all and score the run on another folder")
        permutation = np.random.default_rng(0).permutation(n_classes)
        train, test = np.sort(permutation[:-n_test]), np.sort(permutation[-n_test:])
    return {"train": train, "trainval": train, "test": test, "val": None}[subset]


def _resized(data: ClassDataset, image_size: int) -> ClassDataset:
    """Area-resample a uint8 image dataset to ``image_size`` (vectorised, whole tensor at once)."""
    import torch.nn.functional as F

    if data.images.ndim != 4 or data.images.shape[-1] == image_size:
        return data
    resized = F.interpolate(data.images.float(), size=(image_size, image_size), mode="area")
    images = resized.round().clamp(0, 255).to(data.images.dtype)
    return ClassDataset(images, data.offsets, data.class_names, data.name, dict(data.meta))
