"""kshot.nn.augment: Koch et al.'s random affine distortions on whole batches."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from kshot.errors import KShotError
from kshot.nn.augment import AffineConfig, affine_matrices, apply_affine, random_affine

pytestmark = pytest.mark.usefixtures("one_thread")

NEUTRAL = {"rotation": 0.0, "shear": 0.0, "scale": (1.0, 1.0), "translate": 0.0}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 6, size: int = 28) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=_generator(99))


def _centroid(images: torch.Tensor) -> torch.Tensor:
    """Centre of mass ``(x, y)`` in pixels of each image of ``[N, 1, H, W]``: ``[N, 2]``."""
    _, _, height, width = images.shape
    mass = images.sum((1, 2, 3))
    x = (images.sum((1, 2)) * torch.arange(width)).sum(-1) / mass
    y = (images.sum((1, 3)) * torch.arange(height)).sum(-1) / mass
    return torch.stack([x, y], 1)


# --- the identity -------------------------------------------------------------------------------


def test_neutral_parameters_are_exactly_the_identity() -> None:
    images = _images()
    out = random_affine(images, _generator(0), probability=1.0, **NEUTRAL)
    assert torch.equal(out, images)
    assert out.data_ptr() != images.data_ptr()  # a new tensor, the input untouched
    matrices = affine_matrices(4, _generator(0), probability=1.0, **NEUTRAL)
    assert torch.equal(matrices, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(4, -1, -1))


def test_probability_zero_is_exactly_the_identity() -> None:
    images = _images()
    assert torch.equal(random_affine(images, _generator(3), probability=0.0), images)


def test_identity_rows_untouched_among_moved_ones() -> None:
    images = _images(3)
    matrices = torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[1.0, 0, 1.5], [0, 1, 0]],
                             [[1.0, 0, 0], [0, 1, 0]]])
    out = apply_affine(images, matrices)
    assert torch.equal(out[0], images[0]) and torch.equal(out[2], images[2])
    assert not torch.equal(out[1], images[1])


# --- seeding ------------------------------------------------------------------------------------


def test_same_seed_same_output_other_seed_other_output() -> None:
    images = _images()
    first = random_affine(images, _generator(5), probability=1.0)
    again = random_affine(images, _generator(5), probability=1.0)
    other = random_affine(images, _generator(6), probability=1.0)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, images)


def test_generator_advances_between_calls() -> None:
    generator = _generator(1)
    first = affine_matrices(3, generator)
    second = affine_matrices(3, generator)
    assert not torch.equal(first, second)


# --- geometry -----------------------------------------------------------------------------------


def test_integer_translation_moves_a_pixel_exactly() -> None:
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0
    # content moves right 2 and up 1 pixel (x right, y down)
    out = apply_affine(image, torch.tensor([[[1.0, 0, 2], [0, 1, -1]]]))
    expected = torch.zeros_like(image)
    expected[0, 0, 3, 6] = 1.0
    assert torch.allclose(out, expected, atol=1e-6)


def test_random_translation_moves_the_mass_by_the_drawn_pixels() -> None:
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 11:16] = 1.0  # a blob well inside: no mass leaves the image
    out = random_affine(images, _generator(11), rotation=0.0, shear=0.0, scale=(1.0, 1.0),
                        translate=3.0, probability=1.0)
    shifts = affine_matrices(8, _generator(11), rotation=0.0, shear=0.0, scale=(1.0, 1.0),
                             translate=3.0, probability=1.0)[:, :, 2]  # [8, (tx, ty)]
    assert bool((shifts.abs() <= 3.0).all()) and bool((shifts.abs() > 0).any())
    # bilinear resampling keeps the first moment: the centroid moves by the translation
    assert torch.allclose(_centroid(out) - _centroid(images), shifts, atol=1e-4)
    assert torch.allclose(out.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=1e-5)


def test_outside_is_filled_with_the_background() -> None:
    image = torch.ones(1, 1, 10, 10)
    out = apply_affine(image, torch.tensor([[[1.0, 0, 2], [0, 1, 0]]]))
    assert torch.allclose(out[0, 0, :, :2], torch.zeros(10, 2), atol=1e-6)
    assert torch.allclose(out[0, 0, :, 2:], torch.ones(10, 8))


def test_rotation_about_the_centre() -> None:
    image = torch.zeros(1, 1, 11, 11)
    image[0, 0, 5, 8] = 1.0  # 3 pixels right of the centre (5, 5)
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])  # R(90°): (3, 0) -> (0, 3)
    out = apply_affine(image, quarter)
    expected = torch.zeros_like(image)
    expected[0, 0, 8, 5] = 1.0  # 3 pixels below the centre (y down)
    assert torch.allclose(out, expected, atol=1e-5)


def test_matrices_stay_in_koch_ranges() -> None:
    matrices = affine_matrices(2000, _generator(2), probability=1.0).double()
    linear, shift = matrices[:, :, :2], matrices[:, :, 2]
    assert bool((shift.abs() <= 2.0).all())
    # rotation and the two shears have determinant 1: the determinant is sx * sy
    determinant = torch.linalg.det(linear)
    assert bool((determinant >= 0.8**2 - 1e-6).all() and (determinant <= 1.2**2 + 1e-6).all())
    # with no shear and no scale, the matrix is a rotation by at most 10 degrees
    rotations = affine_matrices(500, _generator(2), shear=0.0, scale=(1.0, 1.0), probability=1.0)
    angles = torch.atan2(rotations[:, 1, 0], rotations[:, 0, 0])
    assert float(angles.abs().max()) <= math.radians(10) + 1e-6
    assert float(angles.abs().max()) > math.radians(8)  # they do spread over the range


def test_each_component_applied_with_the_probability() -> None:
    matrices = affine_matrices(4000, _generator(4), probability=0.5)
    translated_x = (matrices[:, 0, 2] != 0).float().mean()
    assert abs(float(translated_x) - 0.5) < 0.05
    identity = (matrices == torch.tensor([[1.0, 0, 0], [0, 1, 0]])).flatten(1).all(1)
    assert abs(float(identity.float().mean()) - 0.5**7) < 0.01  # all seven left out


# --- shapes, types, validation ------------------------------------------------------------------


def test_shapes_dtypes_and_an_episode_batch() -> None:
    batch = torch.rand(2, 5, 1, 28, 28)  # [B, S, C, H, W] as a batched episode holds it
    out = random_affine(batch.flatten(0, 1), _generator(0)).view_as(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    empty = random_affine(torch.rand(0, 1, 28, 28), _generator(0))
    assert empty.shape == (0, 1, 28, 28)
    pixels = (torch.rand(4, 1, 12, 12) * 255).to(torch.uint8)
    moved = random_affine(pixels, _generator(0), probability=1.0)
    assert moved.dtype == torch.uint8 and moved.shape == pixels.shape


def test_config_defaults_are_koch_and_plug_into_random_affine() -> None:
    config = AffineConfig()
    assert (config.rotation, config.shear, config.scale, config.translate,
            config.probability) == (10.0, 0.3, (0.8, 1.2), 2.0, 0.5)
    images = _images()
    assert torch.equal(random_affine(images, _generator(8), **asdict(config)),
                       random_affine(images, _generator(8)))


@pytest.mark.parametrize("bad, option", [
    ({"rotation": -1.0}, "--rotation"),
    ({"shear": -0.1}, "--shear"),
    ({"scale": (1.2, 0.8)}, "--scale"),
    ({"scale": (0.0, 1.2)}, "--scale"),
    ({"translate": -2.0}, "--translate"),
    ({"probability": 1.5}, "--probability"),
])
def test_bad_ranges_raise(bad: dict, option: str) -> None:
    with pytest.raises(KShotError, match=option):
        AffineConfig(**bad)
    with pytest.raises(KShotError, match=option):
        random_affine(_images(2), _generator(0), **bad)


def test_wrong_shape_raises() -> None:
    with pytest.raises(KShotError, match=r"\[N, C, H, W\]"):
        random_affine(torch.rand(1, 28, 28), _generator(0))


def test_trainer_batch_augmentation_is_seeded_by_step_and_keeps_labels() -> None:
    """TrainConfig(augment="affine") distorts every support and query image of a training batch,
    the same way for the same (seed, step), another way for another step; "none" is the identity."""
    from kshot.data.dataset import ClassDataset
    from kshot.data.episodes import EpisodeSampler
    from kshot.train import TrainConfig, augment_episode

    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 1, 16, 16, generator=gen) * 255).to(torch.uint8)
    dataset = ClassDataset.from_labels(images, torch.arange(8).repeat_interleave(5))
    batch = EpisodeSampler(dataset, 4, 2, 2, seed=1).batch([0, 1])
    config = TrainConfig(augment="affine", aug_probability=1.0, seed=3)
    first = augment_episode(batch, config, step=5)
    again = augment_episode(batch, config, step=5)
    other = augment_episode(batch, config, step=6)
    assert first.support_x.shape == batch.support_x.shape
    assert first.query_x.shape == batch.query_x.shape
    assert torch.equal(first.support_x, again.support_x) and torch.equal(first.query_x, again.query_x)
    assert not torch.equal(first.support_x, other.support_x)
    assert not torch.equal(first.query_x, batch.query_x)
    assert torch.equal(first.support_y, batch.support_y) and torch.equal(first.query_y, batch.query_y)
    assert augment_episode(batch, TrainConfig(), step=5) is batch
