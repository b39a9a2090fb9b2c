"""kshot.data.dataset.ClassDataset: construction, invariants, subsets, rotations, to_float."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kshot.data.dataset import ClassDataset
from kshot.errors import KShotError


def indexed_images(n_items: int, size: int = 3) -> torch.Tensor:
    """``uint8 [n_items, 1, size, size]`` where every pixel of item ``i`` is ``i`` (traceable)."""
    ids = torch.arange(n_items, dtype=torch.uint8).view(-1, 1, 1, 1)
    return ids.expand(-1, 1, size, size).clone()


def item_ids(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].tolist()


# --- from_labels -------------------------------------------------------------------------------


def test_from_labels_sorts_by_class_stably() -> None:
    labels = [2, 0, 1, 0, 2, 1, 0]
    dataset = ClassDataset.from_labels(indexed_images(7), labels)
    # items of each class keep their original order
    assert item_ids(dataset.images) == [1, 3, 6, 2, 5, 0, 4]
    assert dataset.offsets.tolist() == [0, 3, 5, 7]
    assert dataset.sizes.tolist() == [3, 2, 2]
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert dataset.class_names == ("0", "1", "2")
    assert dataset.n_classes == 3 and len(dataset) == 7
    assert dataset.item_shape == (1, 3, 3)
    assert dataset.images.is_contiguous()


def test_from_labels_offsets_sizes_labels_consistent_with_unequal_and_empty_classes() -> None:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([0, 1, 3], [5, 1, 7]))  # class 2 and class 4 are empty
    names = ["a", "b", "c", "d", "e"]
    images = indexed_images(len(labels)).numpy()
    dataset = ClassDataset.from_labels(images, labels, names, name="toy")
    assert dataset.class_names == tuple(names) and dataset.name == "toy"
    assert dataset.sizes.tolist() == [5, 1, 0, 7, 0]
    assert dataset.offsets.tolist() == [0, 5, 6, 6, 13, 13]
    assert int(dataset.sizes.sum()) == len(dataset) == len(dataset.labels)
    assert dataset.labels.tolist() == sorted(labels.tolist())
    for c in range(dataset.n_classes):
        ids = item_ids(dataset.class_items(c))
        assert ids == [i for i, label in enumerate(labels) if label == c]
        assert (dataset.labels[dataset.offsets[c] : dataset.offsets[c + 1]] == c).all()


def test_from_labels_accepts_numpy_and_lists() -> None:
    images = np.zeros((4, 2), np.float32)
    dataset = ClassDataset.from_labels(images, np.array([1, 0, 1, 0]))
    assert torch.is_tensor(dataset.images) and dataset.images.dtype == torch.float32
    assert dataset.sizes.tolist() == [2, 2]


@pytest.mark.parametrize(
    ("n_images", "labels", "names", "match"),
    [
        (3, [0, 1], None, "3 items but 2 labels"),
        (3, [0, 1, 2], ["a", "b"], "only 2 class names"),
    ],
)
def test_from_labels_rejects_inconsistent_input(n_images, labels, names, match) -> None:
    with pytest.raises(KShotError, match=match):
        ClassDataset.from_labels(indexed_images(n_images), labels, names)


# --- offsets validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offsets", "match"),
    [
        ([0, 2], "one entry per class plus one"),  # 2 classes need 3 offsets
        ([[0, 2, 4]], "one entry per class plus one"),  # not 1-D
        ([1, 2, 4], "from 0 to the number of items"),
        ([0, 2, 3], "from 0 to the number of items"),
    ],
)
def test_bad_offsets_raise(offsets, match) -> None:
    with pytest.raises(KShotError, match=match):
        ClassDataset(indexed_images(4), torch.tensor(offsets), ("a", "b"))


def test_decreasing_offsets_raise() -> None:
    with pytest.raises(KShotError, match="must not decrease"):
        ClassDataset(indexed_images(4), torch.tensor([0, 3, 1, 4]), ("a", "b", "c"))


def test_valid_offsets_accepted() -> None:
    dataset = ClassDataset(indexed_images(4), torch.tensor([0, 3, 3, 4]), ("a", "b", "c"))
    assert dataset.sizes.tolist() == [3, 0, 1]


# --- subset ------------------------------------------------------------------------------------


@pytest.fixture
def five_classes() -> ClassDataset:
    labels = np.repeat(np.arange(5), [2, 4, 1, 3, 5])
    dataset = ClassDataset.from_labels(indexed_images(len(labels)), labels, list("abcde"),
                                       name="five")
    dataset.meta["note"] = "kept"
    return dataset


def test_subset_reorders_and_relabels(five_classes: ClassDataset) -> None:
    sub = five_classes.subset([3, 0, 4])
    assert sub.class_names == ("d", "a", "e")
    assert sub.sizes.tolist() == [3, 2, 5]
    assert sub.offsets.tolist() == [0, 3, 5, 10]
    assert sub.labels.tolist() == [0] * 3 + [1] * 2 + [2] * 5
    for new, old in enumerate([3, 0, 4]):
        assert torch.equal(sub.class_items(new), five_classes.class_items(old))
    assert sub.name == "five" and five_classes.subset([1], name="other").name == "other"
    assert sub.meta == {"note": "kept"}
    sub.meta["note"] = "changed"  # the subset's meta is a copy
    assert five_classes.meta["note"] == "kept"


def test_subset_accepts_tensor_and_empty(five_classes: ClassDataset) -> None:
    sub = five_classes.subset(torch.tensor([1]))
    assert item_ids(sub.images) == item_ids(five_classes.class_items(1))
    empty = five_classes.subset([])
    assert empty.n_classes == 0 and len(empty) == 0 and empty.offsets.tolist() == [0]


@pytest.mark.parametrize("classes", [[5], [-1], [0, 7]])
def test_subset_out_of_range_raises(five_classes: ClassDataset, classes) -> None:
    with pytest.raises(KShotError, match="out of range"):
        five_classes.subset(classes)


# --- rotations ---------------------------------------------------------------------------------


def test_rot90_of_a_known_non_symmetric_image() -> None:
    image = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8)
    dataset = ClassDataset.from_labels(image.view(1, 1, 3, 3), [0], ["x"])
    rotated = dataset.with_rotations()
    assert rotated.class_names == ("x@rot0", "x@rot90", "x@rot180", "x@rot270")
    expected = {
        0: [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        1: [[3, 6, 9], [2, 5, 8], [1, 4, 7]],  # 90° counter-clockwise (torch.rot90, k=1)
        2: [[9, 8, 7], [6, 5, 4], [3, 2, 1]],
        3: [[7, 4, 1], [8, 5, 2], [9, 6, 3]],
    }
    for k, pixels in expected.items():
        assert rotated.class_items(k)[0, 0].tolist() == pixels
        assert torch.equal(rotated.class_items(k)[0, 0], torch.rot90(image, k))


def test_with_rotations_adds_each_angle_as_new_classes(five_classes: ClassDataset) -> None:
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(five_classes), 2, 4, 4), generator=rng, dtype=torch.uint8)
    dataset = ClassDataset(images, five_classes.offsets, five_classes.class_names, "five",
                           {"note": "kept"})
    rotated = dataset.with_rotations()
    n = dataset.n_classes
    assert rotated.n_classes == 4 * n and len(rotated) == 4 * len(dataset)
    assert rotated.sizes.tolist() == dataset.sizes.tolist() * 4
    assert rotated.item_shape == dataset.item_shape and rotated.images.dtype == torch.uint8
    assert rotated.meta == {"note": "kept"}
    for r, angle in enumerate((0, 90, 180, 270)):
        for c in range(n):
            assert rotated.class_names[r * n + c] == f"{dataset.class_names[c]}@rot{angle}"
            expected = torch.rot90(dataset.class_items(c), k=r, dims=(2, 3))
            assert torch.equal(rotated.class_items(r * n + c), expected)


def test_with_rotations_custom_angles_and_errors(five_classes: ClassDataset) -> None:
    two = five_classes.with_rotations((0, 180))
    assert two.n_classes == 10 and two.class_names[5] == "a@rot180"
    with pytest.raises(KShotError, match="multiples of 90"):
        five_classes.with_rotations((0, 45))
    features = ClassDataset.from_labels(torch.zeros(4, 3), [0, 0, 1, 1])
    with pytest.raises(KShotError, match="rotations need image items"):
        features.with_rotations()


# --- to_float ----------------------------------------------------------------------------------


def test_to_float_scales_uint8_to_unit_interval(five_classes: ClassDataset) -> None:
    items = torch.tensor([0, 1, 128, 255], dtype=torch.uint8)
    result = five_classes.to_float(items)
    assert result.dtype == torch.float32
    assert torch.allclose(result, torch.tensor([0.0, 1 / 255, 128 / 255, 1.0]))
    assert items.tolist() == [0, 1, 128, 255]  # input untouched


def test_to_float_keeps_features_as_stored() -> None:
    dataset = ClassDataset.from_labels(torch.zeros(2, 3), [0, 1])
    features = torch.tensor([[-1.5, 0.0, 300.0]], dtype=torch.float64)
    result = dataset.to_float(features)
    assert result.dtype == torch.float32
    assert result.tolist() == [[-1.5, 0.0, 300.0]]
