"""Small data sets bundled with scikit-learn (no network): iris features and 8x8 digits."""

from __future__ import annotations

import numpy as np
import torch

from kshot.data.dataset import ClassDataset

DIGITS_MAX_VALUE = 16
"""scikit-learn's digits count ink in 4x4 blocks of a 32x32 bitmap: pixel values 0..16."""


def load_iris() -> ClassDataset:
    """Fisher's iris: ``float32 [150, 4]`` features, 3 classes of 50 named after the species."""
    from sklearn.datasets import load_iris as sklearn_load_iris

    bunch = sklearn_load_iris()
    features = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32))  # float32 [150, 4]
    dataset = ClassDataset.from_labels(
        features,
        torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)),
        class_names=[str(species) for species in bunch.target_names],
        name="iris",
    )
    dataset.meta.update(feature_names=tuple(bunch.feature_names), namespace="iris")
    return dataset


def load_digits() -> ClassDataset:
    """scikit-learn's digits: ``uint8 [1797, 1, 8, 8]`` (0..16 scaled to 0..255), 10 classes."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    scaled = np.rint(np.asarray(bunch.images) * (255.0 / DIGITS_MAX_VALUE))
    images = torch.from_numpy(scaled.astype(np.uint8)).unsqueeze(1)  # uint8 [N, 1, 8, 8]
    dataset = ClassDataset.from_labels(
        images,
        torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)),
        class_names=[str(digit) for digit in range(10)],
        name="digits",
    )
    dataset.meta["namespace"] = "digits"
    return dataset
