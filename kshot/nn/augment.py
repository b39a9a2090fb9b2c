"""Koch et al.'s random affine distortions, on a whole batch of images at once.

Koch, Zemel & Salakhutdinov (2015, §4.2) augment Omniglot with small random affine transforms
``T = (θ, ρx, ρy, sx, sy, tx, ty)``: a rotation θ ∈ [−10°, 10°], shears ρx, ρy ∈ [−0.3, 0.3],
scales sx, sy ∈ [0.8, 1.2] and translations tx, ty ∈ [−2, 2] pixels, each component included
with probability 0.5. :func:`affine_matrices` draws them from a ``torch.Generator`` and
:func:`random_affine` applies them with one ``affine_grid`` / ``grid_sample`` call (bilinear,
the outside filled with 0: kshot's images are bright ink on a 0 background).

An image whose transform is the identity (every component left out, or all parameters neutral)
comes back bit for bit unchanged. The same generator state gives the same distortions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kshot.config import NON_NEGATIVE, POSITIVE, PROBABILITY, Range, check_ranges
from kshot.errors import KShotError


@dataclass
class AffineConfig:
    """Koch et al.'s distortion ranges (their defaults); ``random_affine(x, g, **asdict(c))``."""

    rotation: float = 10.0
    """Largest rotation, degrees (uniform in ±rotation)."""
    shear: float = 0.3
    """Largest shear, in x and in y independently (uniform in ±shear)."""
    scale: tuple[float, float] = (0.8, 1.2)
    """Range of the scale factors, in x and in y independently."""
    translate: float = 2.0
    """Largest translation, pixels, in x and in y independently (uniform in ±translate)."""
    probability: float = 0.5
    """Chance that each of the seven components is applied (Koch et al.: 0.5)."""

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        check_ranges(self, rotation=Range(0, 180), shear=NON_NEGATIVE, scale=POSITIVE,
                     translate=NON_NEGATIVE, probability=PROBABILITY)
        if len(self.scale) != 2 or self.scale[0] > self.scale[1]:
            raise KShotError(f"--scale must be two numbers LOW HIGH with LOW <= HIGH, got "
                             f"{self.scale!r}")


def affine_matrices(n: int, generator: torch.Generator, rotation: float = 10.0,
                    shear: float = 0.3, scale: tuple[float, float] = (0.8, 1.2),
                    translate: float = 2.0, probability: float = 0.5) -> torch.Tensor:
    """``n`` random forward affine maps ``[n, 2, 3]`` in pixel units about the image centre.

    Image content at offset ``p = (x, y)`` from the centre (x right, y down, pixels) moves to
    ``M[:, :2] @ p + M[:, 2]``, where ``M[:, :2] = R(θ) · [[1, ρx], [0, 1]] · [[1, 0], [ρy, 1]]
    · diag(sx, sy)`` (the shears one after the other: determinant 1, so any shear is invertible)
    and ``M[:, 2] = (tx, ty)``. Each of the seven components is drawn uniformly in its range and
    kept with chance ``probability`` (else it is neutral: 0, or 1 for a scale). Two ``torch.rand``
    draws from ``generator`` (CPU), so a generator state fixes the matrices.
    """
    AffineConfig(rotation, shear, scale, translate, probability)  # checks the ranges
    uniform = torch.rand(n, 7, generator=generator, dtype=torch.float64)
    applied = torch.rand(n, 7, generator=generator, dtype=torch.float64) < probability
    low, high = (float(s) for s in scale)
    span = 2 * uniform - 1  # [n, 7] in [-1, 1)
    theta = span[:, 0] * math.radians(rotation)
    shear_x, shear_y = span[:, 1] * shear, span[:, 2] * shear
    scale_x, scale_y = low + (high - low) * uniform[:, 3], low + (high - low) * uniform[:, 4]
    shift_x, shift_y = span[:, 5] * translate, span[:, 6] * translate
    neutral = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    theta, shear_x, shear_y, scale_x, scale_y, shift_x, shift_y = torch.where(
        applied, torch.stack([theta, shear_x, shear_y, scale_x, scale_y, shift_x, shift_y], 1),
        neutral).unbind(1)
    cos, sin = theta.cos(), theta.sin()
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
    # [[1, ρx], [0, 1]] @ [[1, 0], [ρy, 1]]
    shear_matrix = torch.stack([1 + shear_x * shear_y, shear_x, shear_y,
                                torch.ones_like(shear_y)], 1).view(n, 2, 2)
    linear = rotate @ shear_matrix @ torch.diag_embed(torch.stack([scale_x, scale_y], 1))
    # cos/sin of an exact 0 are exact, so a left-out transform is exactly the identity
    return torch.cat([linear, torch.stack([shift_x, shift_y], 1).unsqueeze(-1)], 2).float()


def sampling_grid_matrices(forward: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ``affine_grid`` matrices (output -> input, normalised, ``align_corners=True``) that
    apply the pixel-unit forward maps ``forward [N, 2, 3]`` to ``height × width`` images."""
    forward = forward.double()
    # normalised = pixels-from-centre * (2 / (size - 1)) per axis (align_corners=True)
    to_normal = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], dtype=torch.float64)
    linear = to_normal[:, None] * forward[:, :, :2] / to_normal[None, :]  # S A S^-1
    shift = to_normal * forward[:, :, 2]  # S t
    inverse = torch.linalg.inv(linear)
    return torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], 2)


def random_affine(images: torch.Tensor, generator: torch.Generator, rotation: float = 10.0,
                  shear: float = 0.3, scale: tuple[float, float] = (0.8, 1.2),
                  translate: float = 2.0, probability: float = 0.5) -> torch.Tensor:
    """Koch et al.'s random affine distortion of every image of ``images [N, C, H, W]``.

    One transform per image (:func:`affine_matrices`, drawn from ``generator``), applied by
    :func:`apply_affine`: bilinear, the outside filled with 0 (the background), images whose
    transform is the identity returned exactly as they were. Returns a new tensor of the same
    shape, dtype and device.
    """
    if images.ndim != 4:
        raise KShotError(f"random_affine takes images [N, C, H, W], got shape "
                         f"{tuple(images.shape)}; flatten the leading dimensions first")
    forward = affine_matrices(len(images), generator, rotation, shear, scale, translate,
                              probability)
    return apply_affine(images, forward)


def apply_affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Move the content of each image of ``images [N, C, H, W]`` by its forward map
    ``matrices [N, 2, 3]`` (pixel units about the centre, as :func:`affine_matrices` draws them).

    One ``affine_grid`` / ``grid_sample`` call (bilinear, ``align_corners=True``) for the images
    that move; the outside is filled with 0; images whose map is exactly the identity are copied
    unchanged. Integer images are rounded back to their type.
    """
    if images.ndim != 4 or matrices.shape != (len(images), 2, 3):
        raise KShotError(f"apply_affine takes images [N, C, H, W] and matrices [N, 2, 3], got "
                         f"{tuple(images.shape)} and {tuple(matrices.shape)}")
    _, _, height, width = images.shape
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=matrices.dtype)
    moved = (matrices.cpu() != identity).flatten(1).any(1)  # [N]: images that actually change
    if not bool(moved.any()):
        return images.clone()
    theta = sampling_grid_matrices(matrices.cpu()[moved], height, width)
    moved = moved.to(images.device)
    source = images[moved]
    compute = source if source.is_floating_point() else source.float()
    grid = F.affine_grid(theta.to(device=images.device, dtype=compute.dtype), list(compute.shape),
                         align_corners=True)
    warped = F.grid_sample(compute, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=True)
    if not images.is_floating_point():  # integer pixels: round and keep in the type's range
        info = torch.iinfo(images.dtype)
        warped = warped.round().clamp(info.min, info.max)
    result = images.clone()
    result[moved] = warped.to(images.dtype)
    return result
