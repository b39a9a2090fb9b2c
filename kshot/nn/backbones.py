"""Embedding networks shared by the methods, and a registry of them by name.

* ``conv4`` (Vinyals et al. 2016, Snell et al. 2017): 4 × [conv 3×3, 64 filters, batch norm, ReLU,
  max-pool 2]; a 28×28 image becomes a 64-d vector, a 105×105 one 64·6·6. With
  ``downsample="stride"``, Finn et al.'s Omniglot network (MAML): each block's convolution has
  stride 2 in place of the max-pool, and the last map is averaged over its positions (64-d).
* ``lenet``: the LeNet-style twin of the book's Siamese network (conv 5×5 ×20, pool, conv 5×5 ×50,
  pool, fully connected 500, ReLU, fully connected to the embedding).
* ``booknet``: the book's Siamese network for MNIST exactly as it is written there (chapter 2):
  conv 5×5 ×20, max-pool 2, conv 5×5 ×50, max-pool 2 (no non-linearity after the convolutions),
  fully connected 500, ReLU, fully connected 10, fully connected to a 2-d embedding (plottable).

Backbones take float images ``[B, C, H, W]`` and return ``[B, D]``; ``out_dim`` is ``D``. They run
in channels-last memory format on CPU, which is about 1.6× faster for these small convolutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kshot.errors import KShotError


def _pooled(size: int, times: int) -> int:
    for _ in range(times):
        size //= 2
    return size


DOWNSAMPLES = ("max", "stride")


class MeanPool(nn.Module):
    """The mean over the spatial positions of ``[..., C, H, W]``, kept as ``[..., C, 1, 1]``
    (``nn.AdaptiveAvgPool2d(1)`` has no batching rule under ``torch.func.vmap``: a Python loop)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


class Conv4(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks, flattened; or, with ``downsample="stride"``, four
    conv(stride 2)-BN-ReLU blocks and the mean over the last map's positions (Finn et al. 2017:
    "for Omniglot, we used strided convolutions instead of max-pooling"; 28×28 → 14, 7, 4, 2)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 64,
                 downsample: str = "max") -> None:
        super().__init__()
        if downsample not in DOWNSAMPLES:
            raise KShotError(f"conv4 downsample must be one of {', '.join(DOWNSAMPLES)}, "
                             f"got {downsample!r}")
        if _pooled(image_size, 4) < 1:
            raise KShotError(f"conv4 needs images of at least 16 pixels, got {image_size}")
        blocks: list[nn.Module] = []
        for index in range(4):
            channels = in_channels if index == 0 else hidden
            if downsample == "max":
                blocks += [nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                           nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            else:
                blocks += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1),
                           nn.BatchNorm2d(hidden), nn.ReLU()]
        if downsample == "stride":
            blocks.append(MeanPool())
        self.features = nn.Sequential(*blocks)
        self.out_dim = hidden * (_pooled(image_size, 4) ** 2 if downsample == "max" else 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        return self.features(images).flatten(1)


class LeNet(nn.Module):
    """LeNet-style embedding (the book's Siamese network on MNIST)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 500,
                 embedding_dim: int = 128) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise KShotError(f"lenet needs images of at least 16 pixels, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim))
        self.out_dim = embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class BookNet(nn.Module):
    """The book's MNIST Siamese twin: two conv + max-pool stages, then FC 500 → 10 → ``embedding_dim``.

    As in the book, the only non-linearity is the ReLU after the 500-unit layer (and the
    max-pooling); the default 2-d output is meant to be plotted.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 500,
                 embedding_dim: int = 2) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise KShotError(f"booknet needs images of at least 16 pixels, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, 10),
                                  nn.Linear(10, embedding_dim))
        self.out_dim = embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class Flatten(nn.Module):
    """No learned embedding: items as flat vectors (kNN on pixels, tabular features)."""

    def __init__(self, item_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        self.out_dim = int(torch.Size(item_shape).numel())

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return items.flatten(1)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"conv4": Conv4, "lenet": LeNet, "booknet": BookNet,
                                                  "pixels": Flatten}


def build_backbone(name: str, item_shape: tuple[int, ...], **options) -> nn.Module:
    """A backbone from the registry by name, for items of shape ``item_shape`` (``[C, H, W]``)."""
    if name not in BACKBONES:
        raise KShotError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if name == "pixels":
        return Flatten(tuple(item_shape))
    if len(item_shape) != 3 or item_shape[1] != item_shape[2]:
        raise KShotError(f"backbone {name!r} needs square images [C, H, W], got items of shape "
                         f"{tuple(item_shape)}; use --backbone pixels for feature vectors")
    return BACKBONES[name](in_channels=item_shape[0], image_size=item_shape[1], **options)
