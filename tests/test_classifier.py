"""kshot.classifier.FewShotClassifier: the scikit-learn-style front end on hand-made images.

A ProtoNet on raw pixels needs no training, so its predictions can be worked out by hand.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from kshot.checkpoint import learner_state, save_checkpoint, write_run_config
from kshot.classifier import FewShotClassifier
from kshot.errors import KShotError
from kshot.methods import build_learner
from kshot.protocol import write_seen

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(rows: slice, cols: slice) -> np.ndarray:
    image = np.zeros((4, 4), np.uint8)
    image[rows, cols] = 255
    return image


TOP_LEFT = _image(slice(0, 2), slice(0, 2))
BOTTOM_RIGHT = _image(slice(2, 4), slice(2, 4))
BOTTOM_LEFT = _image(slice(2, 4), slice(0, 2))
TOP_LEFT_DOT = _image(slice(0, 1), slice(0, 1))
BOTTOM_RIGHT_DOT = _image(slice(3, 4), slice(3, 4))


def _classifier() -> FewShotClassifier:
    return FewShotClassifier(build_learner("protonet", {"backbone": "pixels"}, (1, 4, 4)))


def _fitted() -> FewShotClassifier:
    # labels given out of order: classes_ must come out sorted, whatever the order of fit
    support = np.stack([BOTTOM_RIGHT, TOP_LEFT, BOTTOM_LEFT])[:, None]  # uint8 [3, 1, 4, 4]
    return _classifier().fit(support, ["dog", "cat", "bird"])


def test_fit_predict_string_labels() -> None:
    classifier = _fitted()
    assert classifier.classes_.tolist() == ["bird", "cat", "dog"]
    queries = np.stack([TOP_LEFT_DOT, BOTTOM_RIGHT_DOT, BOTTOM_LEFT, TOP_LEFT])[:, None]
    predictions = classifier.predict(queries)
    assert predictions.tolist() == ["cat", "dog", "bird", "cat"]


def test_predict_proba_rows_and_column_order() -> None:
    classifier = _fitted()
    queries = np.stack([TOP_LEFT_DOT, BOTTOM_RIGHT_DOT, BOTTOM_LEFT])[:, None]
    proba = classifier.predict_proba(queries)
    assert proba.shape == (3, 3)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-6)
    assert (proba >= 0).all()
    # columns follow classes_: bird, cat, dog
    assert proba.argmax(1).tolist() == [1, 2, 0]
    # by hand (pixels in 0..1, logits = -squared distance): the bottom-right dot is at squared
    # distance 3 from the dog prototype (BOTTOM_RIGHT: 4 pixels, one shared), 5 from cat
    # (TOP_LEFT: 4 + 1 pixels) and 5 from bird (BOTTOM_LEFT: 4 + 1)
    logits = np.array([-5.0, -5.0, -3.0])
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(proba[1], expected, atol=1e-5)


def test_decision_function_matches_predict_proba() -> None:
    classifier = _fitted()
    queries = torch.from_numpy(np.stack([TOP_LEFT_DOT, BOTTOM_LEFT]))
    logits = classifier.decision_function(queries)
    assert logits.shape == (2, 3)
    assert np.allclose(torch.softmax(logits, -1).numpy(), classifier.predict_proba(queries))


def test_three_dimensional_input_accepted() -> None:
    classifier = _classifier().fit(np.stack([BOTTOM_RIGHT, TOP_LEFT, BOTTOM_LEFT]),  # [N, H, W]
                                   ["dog", "cat", "bird"])
    queries = np.stack([TOP_LEFT_DOT, BOTTOM_RIGHT_DOT])
    four_d = _fitted().predict_proba(queries[:, None])
    assert np.allclose(classifier.predict_proba(queries), four_d)
    assert classifier.predict(queries).tolist() == ["cat", "dog"]


def test_uint8_and_float_inputs_agree() -> None:
    support = np.stack([BOTTOM_RIGHT, TOP_LEFT, BOTTOM_LEFT])
    queries = np.stack([TOP_LEFT_DOT, BOTTOM_RIGHT_DOT, BOTTOM_LEFT])
    from_uint8 = _classifier().fit(support, ["dog", "cat", "bird"])
    from_float = _classifier().fit(support.astype(np.float32) / 255, ["dog", "cat", "bird"])
    assert np.allclose(from_uint8.predict_proba(queries),
                       from_float.predict_proba(queries.astype(np.float64) / 255), atol=1e-6)
    # mixed: uint8 support, float tensor queries
    assert np.allclose(from_uint8.predict_proba(torch.from_numpy(queries).float() / 255),
                       from_uint8.predict_proba(queries), atol=1e-6)


def test_integer_labels_keep_their_type() -> None:
    classifier = _classifier().fit(np.stack([TOP_LEFT, BOTTOM_RIGHT]), [7, 3])
    assert classifier.classes_.tolist() == [3, 7]
    assert classifier.predict(np.stack([TOP_LEFT_DOT])).tolist() == [7]


def test_several_shots_per_class() -> None:
    support = np.stack([TOP_LEFT, TOP_LEFT_DOT, BOTTOM_RIGHT, BOTTOM_RIGHT_DOT])
    classifier = _classifier().fit(support, ["a", "a", "b", "b"])
    assert classifier.predict(np.stack([TOP_LEFT, BOTTOM_RIGHT])).tolist() == ["a", "b"]


def test_wrong_shape_raises() -> None:
    classifier = _classifier()
    with pytest.raises(KShotError, match="shape"):
        classifier.fit(np.zeros((2, 5, 5), np.uint8), ["a", "b"])
    with pytest.raises(KShotError, match="shape"):
        classifier.fit(np.zeros((2, 3, 4, 4), np.uint8), ["a", "b"])  # 3 channels, model has 1
    with pytest.raises(KShotError, match="shape"):
        classifier.fit(np.zeros((4, 4), np.uint8), ["a"])  # one image without the N axis
    fitted = _fitted()
    with pytest.raises(KShotError, match="shape"):
        fitted.predict(np.zeros((1, 1, 5, 5), np.uint8))


def test_empty_input_raises() -> None:
    with pytest.raises(KShotError, match="empty"):
        _classifier().fit(np.zeros((0, 4, 4), np.uint8), [])
    with pytest.raises(KShotError, match="empty"):
        _fitted().predict(np.zeros((0, 4, 4), np.uint8))


def test_predict_before_fit_raises() -> None:
    classifier = _classifier()
    for call in (classifier.predict, classifier.predict_proba, classifier.decision_function):
        with pytest.raises(KShotError, match="fit"):
            call(np.stack([TOP_LEFT]))


def test_label_count_mismatch_raises() -> None:
    support = np.stack([TOP_LEFT, BOTTOM_RIGHT])
    with pytest.raises(KShotError, match="one label per support image"):
        _classifier().fit(support, ["a"])
    with pytest.raises(KShotError, match="one label per support image"):
        _classifier().fit(support, ["a", "b", "c"])
    with pytest.raises(KShotError, match="one label per support image"):
        _classifier().fit(support, [["a", "b"]])


def test_from_run(tmp_path: Path) -> None:
    learner = build_learner("protonet", {"backbone": "pixels"}, (1, 4, 4))
    write_run_config(tmp_path, {"method": "protonet", "method_config": asdict(learner.config),
                                "data": {"item_shape": [1, 4, 4]}})
    save_checkpoint(tmp_path, "best", learner_state(learner), {"method": "protonet"})
    with pytest.raises(KShotError, match="no classes.json"):
        FewShotClassifier.from_run(tmp_path)
    write_seen(tmp_path, ["folder:up", "folder:left"])
    with pytest.raises(KShotError, match="1 of the 2 classes of the support labels"):
        FewShotClassifier.from_run(tmp_path).fit(np.stack([TOP_LEFT, BOTTOM_RIGHT]), ["up", "down"])
    classifier = FewShotClassifier.from_run(tmp_path)
    classifier.fit(np.stack([TOP_LEFT, BOTTOM_RIGHT]), ["top", "down"])
    assert classifier.predict(np.stack([BOTTOM_RIGHT_DOT])).tolist() == ["down"]
    assert classifier.overlap_ == 0


def test_order_sensitive_learner_reads_the_support_set_in_a_fixed_shuffled_order() -> None:
    """Matching Networks with FCE read the support set as a sequence: the classifier gives it a
    seeded random order (as in training, never class-sorted), fitting twice predicts the same, and
    labels stay attached to their images."""
    torch.manual_seed(0)
    learner = build_learner("matching", {"backbone": "pixels", "fce": True}, (1, 4, 4))
    images = np.stack([TOP_LEFT, BOTTOM_RIGHT, BOTTOM_LEFT, TOP_LEFT_DOT, BOTTOM_RIGHT_DOT])[:, None]
    labels = ["a", "b", "c", "a", "b"]
    classifier = FewShotClassifier(learner).fit(images, labels)
    support_y = classifier._support_y.tolist()
    assert support_y != sorted(support_y) or len(set(support_y)) == 1
    for x, y in zip(classifier._support_x, support_y, strict=True):  # each image keeps its label
        index = next(i for i in range(5) if torch.equal(x, torch.as_tensor(images[i]).float() / 255))
        assert classifier.classes_[y] == labels[index]
    first = classifier.predict_proba(images)
    again = FewShotClassifier(learner).fit(images, labels).predict_proba(images)
    np.testing.assert_allclose(first, again)
