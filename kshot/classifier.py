"""FewShotClassifier: a scikit-learn-style front end to any trained learner, on a user's own images.

    clf = FewShotClassifier.from_run("runs/proto")
    clf.fit(support_images, ["cat", "cat", "dog"])   # one or a few images per class
    clf.predict(query_images)                        # -> array of labels
    clf.predict_proba(query_images)                  # -> [n_queries, n_classes], columns = classes_

Images are ``uint8`` (0..255, ink bright) or float (0..1) arrays/tensors ``[N, H, W]`` or
``[N, C, H, W]`` of the learner's item shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.errors import KShotError
from kshot.methods.base import Learner


class FewShotClassifier:
    """Learn classes from a few labelled images (``fit``), then label new images (``predict``)."""

    def __init__(self, learner: Learner, device: str | torch.device = "cpu",
                 run_dir: str | Path | None = None, namespace: str = "folder",
                 allow_overlap: bool = False) -> None:
        self.learner = learner.to(device).eval()
        self.run_dir = None if run_dir is None else str(run_dir)  # whose classes fit checks
        self.namespace = namespace
        self.allow_overlap = allow_overlap
        self.overlap_ = 0
        self.device = torch.device(device)
        self.classes_: np.ndarray | None = None
        self._support_x: torch.Tensor | None = None
        self._support_y: torch.Tensor | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu",
                 namespace: str = "folder", allow_overlap: bool = False) -> FewShotClassifier:
        """The learner of a trained run. ``fit`` refuses labels naming classes the run trained or
        validated on (ids ``<namespace>:<label>``, e.g. ``folder:cat``, ``mnist:3``) unless
        ``allow_overlap``; ``overlap_`` counts them after ``fit`` (-1: the run has no record)."""
        from kshot.checkpoint import load_run
        from kshot.protocol import read_seen

        learner, _, _ = load_run(run_dir)
        if not allow_overlap:
            read_seen(run_dir)  # a run without a record is refused here, not at the first fit
        return cls(learner, device, run_dir, namespace, allow_overlap)

    def _as_items(self, images: Any, what: str) -> torch.Tensor:
        items = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        expected = self.learner.item_shape
        if items.ndim == len(expected) and len(expected) == 3 and expected[0] == 1:
            items = items.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
        if items.ndim != len(expected) + 1 or tuple(items.shape[1:]) != expected:
            raise KShotError(f"{what} must have shape [N, {', '.join(map(str, expected))}], got "
                             f"{tuple(items.shape)}; resize the images to the model's size")
        if len(items) == 0:
            raise KShotError(f"{what} is empty")
        floats = items.float().div(255) if items.dtype == torch.uint8 else items.float()
        return floats.to(self.device)

    def fit(self, support_images: Any, labels: Sequence[Any]) -> FewShotClassifier:
        """Remember the support set: ``support_images [N, ...]`` with one label per image."""
        support_x = self._as_items(support_images, "support_images")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(support_x):
            raise KShotError(f"need one label per support image: {len(support_x)} images, "
                             f"{labels.size} labels")
        if self.run_dir is not None:
            from kshot.protocol import check_overlap

            scored = [f"{self.namespace}:{label}" for label in np.unique(labels)]
            self.overlap_ = check_overlap(self.run_dir, scored, "the support labels",
                                          self.allow_overlap)
        self.classes_, encoded = np.unique(labels, return_inverse=True)
        support_y = torch.as_tensor(encoded, dtype=torch.long, device=self.device)
        if self.learner.order_sensitive:  # read as a sequence: in a fixed random order, as trained
            order = torch.randperm(len(support_y), generator=torch.Generator().manual_seed(0))
            order = order.to(self.device)
            support_x, support_y = support_x[order], support_y[order]
        self._support_x, self._support_y = support_x, support_y
        return self

    def decision_function(self, images: Any) -> torch.Tensor:
        """Logits ``[n_queries, n_classes]`` (columns in the order of ``classes_``); a learner that
        adapts at test (MAML) takes its gradient steps with autograd, others run in inference mode."""
        if self._support_x is None:
            raise KShotError("call fit(support_images, labels) before predicting")
        query_x = self._as_items(images, "images")
        with torch.inference_mode(not self.learner.adapts_at_test), torch.no_grad():
            return self.learner(self._support_x, self._support_y, query_x).cpu()

    def predict_proba(self, images: Any) -> np.ndarray:
        return torch.softmax(self.decision_function(images), -1).numpy()

    def predict(self, images: Any) -> np.ndarray:
        return self.classes_[self.decision_function(images).argmax(-1).numpy()]
