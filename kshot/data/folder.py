"""A user's own images: ``root/<class>/<files>`` as a :class:`ClassDataset`, and query files.

Every image is decoded once to grayscale ``uint8`` of ``image_size x image_size`` (area resampling)
with bright ink on a dark background, the form the benchmarks use. Scans and photos of dark ink on
light paper are inverted: with ``invert="auto"`` per image, when its mean brightness is above 127.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from kshot.data.dataset import ClassDataset
from kshot.data.images import decode_image
from kshot.errors import KShotError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File extensions (lower case) read as images; other files in a class folder are ignored."""

AUTO_INVERT_THRESHOLD = 127
"""With ``invert="auto"`` an image whose mean brightness is above this is inverted."""

Invert = bool | Literal["auto"]


def _is_visible(path: Path) -> bool:
    """False for hidden entries (``.DS_Store``, AppleDouble ``._x.png``, ``.ipynb_checkpoints``)."""
    return not path.name.startswith(".")


def image_files(directory: Path) -> list[Path]:
    """The image files directly inside ``directory``, by extension, sorted by name."""
    return sorted(
        entry
        for entry in directory.iterdir()
        if entry.is_file() and _is_visible(entry) and entry.suffix.lower() in IMAGE_EXTENSIONS
    )


def _check_options(image_size: int, invert: Invert) -> None:
    is_integer = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not is_integer or image_size < 1:
        raise KShotError(f"image_size must be a positive integer, got {image_size!r}")
    if invert not in (True, False, "auto"):
        raise KShotError(f"invert must be True, False or 'auto', got {invert!r}")


def _decode_files(paths: Sequence[Path], image_size: int, invert: Invert) -> np.ndarray:
    """Decode ``paths`` to ``uint8 [N, S, S]`` with bright ink, inverting as ``invert`` says."""
    image_size = int(image_size)
    pixels = np.empty((len(paths), image_size, image_size), dtype=np.uint8)
    for index, path in enumerate(paths):  # one decode per file: Pillow has no batch decoder
        pixels[index] = decode_image(path, image_size, invert=False, name=str(path))
    if invert == "auto":
        light = pixels.reshape(len(paths), -1).mean(axis=1) > AUTO_INVERT_THRESHOLD  # bool [N]
        pixels[light] = 255 - pixels[light]
    elif invert:
        np.subtract(255, pixels, out=pixels)
    return pixels


def load_folder(
    root: str | os.PathLike,
    image_size: int = 28,
    invert: Invert = "auto",
    name: str | None = None,
) -> ClassDataset:
    """Images under ``root/<class>/`` as a :class:`ClassDataset` of ``uint8 [N, 1, S, S]``.

    Classes are the sub-folder names, sorted; inside each, files with an image extension are read
    in sorted order (hidden files and other files are ignored). ``invert`` is ``"auto"`` (per image:
    invert when mean brightness > 127), True or False. ``meta["files"]`` lists every item's path in
    dataset order.
    """
    _check_options(image_size, invert)
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise KShotError(
            f"image folder {root} {state}; pass a folder holding one sub-folder per class"
        )
    class_dirs = sorted(entry for entry in root.iterdir() if entry.is_dir() and _is_visible(entry))
    if not class_dirs:
        raise KShotError(
            f"{root} has no class folders; put each class's images in its own sub-folder, "
            f"e.g. {root / 'cat' / '1.png'}"
        )
    files_per_class = [image_files(class_dir) for class_dir in class_dirs]
    for class_dir, files in zip(class_dirs, files_per_class):
        if not files:
            raise KShotError(
                f"class folder {class_dir} holds no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add some or remove the folder"
            )
    all_files = [path for files in files_per_class for path in files]
    pixels = _decode_files(all_files, image_size, invert)  # uint8 [N, S, S], already class-sorted
    sizes = torch.tensor([len(files) for files in files_per_class], dtype=torch.long)
    offsets = torch.zeros(len(class_dirs) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(sizes, 0)
    return ClassDataset(
        torch.from_numpy(pixels).unsqueeze(1),  # uint8 [N, 1, S, S]
        offsets,
        tuple(class_dir.name for class_dir in class_dirs),
        name or root.name,
        {"root": str(root), "files": tuple(str(path) for path in all_files), "namespace": "folder"},
    )


def load_images(
    paths: Sequence[str | os.PathLike],
    image_size: int = 28,
    invert: Invert = "auto",
) -> torch.Tensor:
    """Query image files decoded like :func:`load_folder` does: ``uint8 [N, 1, S, S]``, in order."""
    _check_options(image_size, invert)
    files = [Path(path).expanduser() for path in paths]
    if not files:
        raise KShotError("no image files given; pass at least one image to recognise")
    for path in files:
        if not path.is_file():
            raise KShotError(f"image {path} does not exist; check the path")
    return torch.from_numpy(_decode_files(files, image_size, invert)).unsqueeze(1)
