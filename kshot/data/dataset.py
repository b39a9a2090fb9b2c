"""ClassDataset: the in-memory form every data set takes before episodes are drawn from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from kshot.errors import KShotError


@dataclass(frozen=True)
class ClassDataset:
    """Items of one split, sorted by class, held in memory as one tensor.

    ``images`` is ``uint8 [items, C, H, W]`` for images (ink bright, background 0) or
    ``float32 [items, D]`` for tabular features (iris). Items of class ``c`` are
    ``images[offsets[c]:offsets[c + 1]]``; classes may differ in size.
    """

    images: torch.Tensor
    offsets: torch.Tensor  # int64 [n_classes + 1]
    class_names: tuple[str, ...]
    name: str = "dataset"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) != len(self.class_names) + 1:
            raise KShotError(
                f"{self.name}: offsets must have one entry per class plus one "
                f"({len(self.offsets)} for {len(self.class_names)} classes)"
            )
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != len(self.images):
            raise KShotError(f"{self.name}: offsets must run from 0 to the number of items")
        if len(self.class_names) and bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise KShotError(f"{self.name}: offsets must not decrease")

    @classmethod
    def from_labels(
        cls,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        class_names: Sequence[str] | None = None,
        name: str = "dataset",
    ) -> ClassDataset:
        """Build from items in any order and integer labels ``0..C-1``; sorts by class (stable)."""
        images = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if len(images) != len(labels):
            raise KShotError(f"{name}: {len(images)} items but {len(labels)} labels")
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        if class_names is None:
            class_names = [str(c) for c in range(n_classes)]
        if len(class_names) < n_classes:
            raise KShotError(f"{name}: labels go up to {n_classes - 1} but only "
                             f"{len(class_names)} class names were given")
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=len(class_names))
        offsets = torch.zeros(len(class_names) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        return cls(images[order].contiguous(), offsets, tuple(class_names), name)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def sizes(self) -> torch.Tensor:
        """Items per class, ``int64 [n_classes]``."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def labels(self) -> torch.Tensor:
        """Class of every item, ``int64 [items]``."""
        return torch.repeat_interleave(torch.arange(self.n_classes), self.sizes)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def class_items(self, c: int) -> torch.Tensor:
        return self.images[int(self.offsets[c]) : int(self.offsets[c + 1])]

    def subset(self, classes: Sequence[int] | torch.Tensor, name: str | None = None) -> ClassDataset:
        """The dataset restricted to ``classes`` (in the given order), relabelled ``0..len-1``."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= self.n_classes):
            raise KShotError(f"{self.name}: class index out of range 0..{self.n_classes - 1}")
        starts, sizes = self.offsets[classes], self.sizes[classes]
        # index of every kept item: start of its class + position inside the class
        within = torch.arange(int(sizes.sum())) - torch.repeat_interleave(
            torch.cumsum(sizes, 0) - sizes, sizes
        )
        index = torch.repeat_interleave(starts, sizes) + within
        offsets = torch.zeros(len(classes) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(sizes, 0)
        names = tuple(self.class_names[int(c)] for c in classes)
        return ClassDataset(self.images[index], offsets, names, name or self.name, dict(self.meta))

    def with_rotations(self, angles: Sequence[int] = (0, 90, 180, 270)) -> ClassDataset:
        """Every class again rotated by each angle (multiples of 90°), as a new class.

        Vinyals et al. / Snell et al.: a rotated character is a new character. Class ``c`` rotated
        by ``angles[r]`` is class ``r * n_classes + c``.
        """
        if self.images.ndim != 4:
            raise KShotError(f"{self.name}: rotations need image items [C, H, W]")
        parts, names = [], []
        for angle in angles:
            if angle % 90:
                raise KShotError(f"rotation angles must be multiples of 90, got {angle}")
            parts.append(torch.rot90(self.images, k=(angle // 90) % 4, dims=(2, 3)))
            names.extend(f"{n}@rot{angle}" for n in self.class_names)
        sizes = self.sizes.repeat(len(angles))
        offsets = torch.zeros(len(sizes) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(sizes, 0)
        return ClassDataset(torch.cat(parts).contiguous(), offsets, tuple(names), self.name,
                            dict(self.meta))

    def to_float(self, items: torch.Tensor) -> torch.Tensor:
        """Items of this dataset as float32 in ``[0, 1]`` (images) or as stored (features)."""
        if items.dtype == torch.uint8:
            return items.float().div_(255.0)
        return items.float()
