"""Data sets by name: one entry point from the CLI's ``--dataset/--split`` to a ClassDataset."""

from __future__ import annotations

from pathlib import Path

from kshot.data.dataset import ClassDataset
from kshot.errors import KShotError

DATASETS = ("omniglot", "mnist", "digits", "iris", "folder")
DEFAULT_SPLITS = {"omniglot": "vinyals", "mnist": "test"}


def load_dataset(
    dataset: str,
    split: str | None = None,
    subset: str = "train",
    image_size: int = 28,
    rotations: bool | None = None,
    data_dir: str | Path | None = None,
    folder: str | Path | None = None,
    progress: bool = True,
) -> ClassDataset:
    """One subset of a named data set.

    * ``omniglot``: ``split`` = ``vinyals`` or ``lake``; ``subset`` = train / val / trainval / test.
    * ``mnist``: ``split`` = the file (``test``, or ``train`` where the user has it); every subset
      is all ten digits (MNIST is a transfer target: Koch et al.'s 10-way one-shot test).
    * ``digits``, ``iris`` (scikit-learn) and ``folder`` (``root/<class>/<images>``): every subset is
      every class.
    """
    if dataset == "omniglot":
        from kshot.data.omniglot import load_omniglot

        return load_omniglot(split or DEFAULT_SPLITS["omniglot"], subset, image_size, rotations, data_dir,
                             progress=progress)
    if dataset == "mnist":
        from kshot.data.mnist import load_mnist

        data = load_mnist(split or DEFAULT_SPLITS["mnist"], data_dir=data_dir, progress=progress)
        return _resized(data, image_size)
    if dataset == "digits":
        from kshot.data.toy import load_digits

        return load_digits()
    if dataset == "iris":
        from kshot.data.toy import load_iris

        return load_iris()
    if dataset == "folder":
        from kshot.data.folder import load_folder

        if not folder:
            raise KShotError("--dataset folder needs --folder PATH (a folder of class sub-folders)")
        return load_folder(folder, image_size)
    raise KShotError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")


def _resized(data: ClassDataset, image_size: int) -> ClassDataset:
    """Area-resample a uint8 image dataset to ``image_size`` (vectorised, whole tensor at once)."""
    import torch.nn.functional as F

    if data.images.ndim != 4 or data.images.shape[-1] == image_size:
        return data
    resized = F.interpolate(data.images.float(), size=(image_size, image_size), mode="area")
    images = resized.round().clamp(0, 255).to(data.images.dtype)
    return ClassDataset(images, data.offsets, data.class_names, data.name, dict(data.meta))
