"""kshot.methods (ProtoNet, kNN, the learner registry) and kshot.nn.backbones.

Loss formulas and logits are checked against values computed by hand on tiny explicit episodes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kshot.data.episodes import Episode
from kshot.errors import KShotError
from kshot.methods import KNN, METHODS, ProtoNet, build_learner, get_method
from kshot.methods.protonet import class_means, squared_distances
from kshot.nn.backbones import BACKBONES, Conv4, LeNet, build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


# --- protonet helpers --------------------------------------------------------------------------


def test_class_means_hand_computed() -> None:
    embeddings = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [1.0, 3.0], [5.0, -1.0]]])  # [1, 4, 2]
    labels = torch.tensor([[0, 0, 1, 1]])
    means = class_means(embeddings, labels, 2)
    assert torch.equal(means, torch.tensor([[[1.0, 1.0], [3.0, 1.0]]]))


def test_class_means_unequal_counts_and_batches() -> None:
    embeddings = torch.tensor([
        [[1.0], [2.0], [6.0]],  # class 0: 1, 2 -> 1.5; class 1: 6
        [[4.0], [0.0], [8.0]],  # class 1: 4; class 0: 0, 8 -> 4
    ])
    labels = torch.tensor([[0, 0, 1], [1, 0, 0]])
    means = class_means(embeddings, labels, 2)
    assert torch.equal(means, torch.tensor([[[1.5], [6.0]], [[4.0], [4.0]]]))


def test_squared_distances_hand_computed() -> None:
    queries = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])  # [1, 2, 2]
    prototypes = torch.tensor([[[1.0, 1.0], [3.0, 1.0]]])  # [1, 2, 2]
    distances = squared_distances(queries, prototypes)
    # (0,0)-(1,1): 2; (0,0)-(3,1): 10; (1,2)-(1,1): 1; (1,2)-(3,1): 5
    assert torch.allclose(distances, torch.tensor([[[2.0, 10.0], [1.0, 5.0]]]))


def test_squared_distances_never_negative() -> None:
    points = torch.randn(1, 5, 3) * 1e3
    distances = squared_distances(points, points)
    assert bool((distances >= 0).all())
    assert torch.allclose(distances, torch.cdist(points, points) ** 2, rtol=1e-3, atol=1.0)


# --- ProtoNet ----------------------------------------------------------------------------------


def _pixel_episode() -> Episode:
    """A hand-made 2-way episode of 2x2 images: class 0 has two support images, class 1 one."""
    support_x = torch.tensor([
        [[[1.0, 0.0], [0.0, 0.0]]],  # class 0, flat [1, 0, 0, 0]
        [[[0.0, 0.0], [0.0, 1.0]]],  # class 0, flat [0, 0, 0, 1] -> prototype [.5, 0, 0, .5]
        [[[0.0, 1.0], [1.0, 0.0]]],  # class 1, flat [0, 1, 1, 0] -> prototype [0, 1, 1, 0]
    ])
    support_y = torch.tensor([0, 0, 1])
    query_x = torch.tensor([
        [[[1.0, 0.0], [0.0, 0.0]]],  # flat [1, 0, 0, 0]
        [[[0.0, 1.0], [0.0, 0.0]]],  # flat [0, 1, 0, 0]
    ])
    query_y = torch.tensor([0, 1])
    return Episode(support_x, support_y, query_x, query_y, n_way=2, k_shot=1)


# squared distances of the queries to the prototypes, by hand:
# q0 = [1,0,0,0]: to [.5,0,0,.5] -> .25 + .25 = .5; to [0,1,1,0] -> 1 + 1 + 1 = 3
# q1 = [0,1,0,0]: to [.5,0,0,.5] -> .25 + 1 + .25 = 1.5; to [0,1,1,0] -> 1
HAND_DISTANCES = torch.tensor([[0.5, 3.0], [1.5, 1.0]])


def test_protonet_logits_are_negative_squared_distances() -> None:
    episode = _pixel_episode()
    learner = build_learner("protonet", {"backbone": "pixels"}, (1, 2, 2))
    logits = learner(episode.support_x, episode.support_y, episode.query_x)
    assert logits.shape == (2, 2)
    assert torch.allclose(logits, -HAND_DISTANCES)


def test_protonet_temperature_divides_logits() -> None:
    episode = _pixel_episode()
    learner = build_learner("protonet", {"backbone": "pixels", "temperature": 2.0}, (1, 2, 2))
    logits = learner(episode.support_x, episode.support_y, episode.query_x)
    assert torch.allclose(logits, -HAND_DISTANCES / 2)


def test_protonet_loss_is_cross_entropy_by_hand() -> None:
    episode = _pixel_episode()
    learner = build_learner("protonet", {"backbone": "pixels"}, (1, 2, 2))
    loss, metrics = learner.loss(episode)
    # -log softmax(-d)[true]: row 0 (true 0): log(1 + e^{-(3 - .5)}); row 1 (true 1):
    # log(1 + e^{-(1.5 - 1)})
    expected = (math.log(1 + math.exp(-2.5)) + math.log(1 + math.exp(-0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == 1.0  # both queries are nearest their own prototype


def test_protonet_loss_accuracy_counts_mistakes() -> None:
    episode = _pixel_episode()
    wrong = Episode(episode.support_x, episode.support_y, episode.query_x,
                    torch.tensor([1, 1]), 2, 1)  # query 0 labelled 1: one of two is now wrong
    learner = build_learner("protonet", {"backbone": "pixels"}, (1, 2, 2))
    loss, metrics = learner.loss(wrong)
    expected = (math.log(1 + math.exp(2.5)) + math.log(1 + math.exp(-0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == 0.5


def test_protonet_euclidean_distance_is_the_root_with_finite_gradients() -> None:
    episode = _pixel_episode()
    learner = build_learner("protonet", {"backbone": "pixels", "distance": "euclidean"}, (1, 2, 2))
    logits = learner(episode.support_x, episode.support_y, episode.query_x)
    assert torch.allclose(logits, -HAND_DISTANCES.sqrt())
    # a query exactly on its prototype: distance 0, and still a finite gradient
    support_x = episode.support_x[2:].clone().requires_grad_(True)
    on_prototype = learner(support_x, torch.tensor([0]), episode.support_x[2:])
    on_prototype.sum().backward()
    assert on_prototype.abs().max() < 1e-5 and bool(torch.isfinite(support_x.grad).all())


def test_protonet_cosine_distance() -> None:
    episode = _pixel_episode()
    learner = build_learner("protonet", {"backbone": "pixels", "distance": "cosine"}, (1, 2, 2))
    logits = learner(episode.support_x, episode.support_y, episode.query_x)
    # cosine similarity: q0 . p0 = .5 / (1 * sqrt(.5)) = 1/sqrt(2); q0 . p1 = 0;
    # q1 . p0 = 0; q1 . p1 = 1 / (1 * sqrt(2))
    half_root = 1 / math.sqrt(2)
    assert torch.allclose(logits, torch.tensor([[half_root, 0.0], [0.0, half_root]]), atol=1e-6)
    # the scale of the embeddings does not matter for cosine
    scaled = learner(episode.support_x * 7, episode.support_y, episode.query_x * 3)
    assert torch.allclose(scaled, logits, atol=1e-6)


def _random_batch(n_batch: int, n_way: int, k_shot: int, n_query: int, size: int) -> Episode:
    generator = torch.Generator().manual_seed(7)
    support_x = torch.rand(n_batch, n_way * k_shot, 1, size, size, generator=generator)
    query_x = torch.rand(n_batch, n_way * n_query, 1, size, size, generator=generator)
    support_y = torch.arange(n_way).repeat_interleave(k_shot).expand(n_batch, -1).clone()
    query_y = torch.arange(n_way).repeat_interleave(n_query).expand(n_batch, -1).clone()
    return Episode(support_x, support_y, query_x, query_y, n_way, k_shot)


def test_protonet_batched_forward_equals_per_episode() -> None:
    torch.manual_seed(0)
    learner = build_learner("protonet", {"hidden": 8}, (1, 28, 28)).eval()
    batch = _random_batch(3, n_way=3, k_shot=2, n_query=2, size=28)
    with torch.no_grad():
        batched = learner(batch.support_x, batch.support_y, batch.query_x)
        assert batched.shape == (3, 6, 3)
        for index, episode in enumerate(batch.unbatch()):
            single = learner(episode.support_x, episode.support_y, episode.query_x)
            assert single.shape == (6, 3)
            assert torch.allclose(batched[index], single, rtol=1e-4, atol=1e-4)


def test_protonet_backward_reaches_conv4() -> None:
    torch.manual_seed(0)
    learner = build_learner("protonet", {"hidden": 8}, (1, 16, 16)).train()
    batch = _random_batch(2, n_way=3, k_shot=1, n_query=2, size=16)
    loss, _ = learner.loss(batch)
    loss.backward()
    for name, parameter in learner.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
    # a conv bias followed by batch norm gets (numerically) no gradient; everything else must
    checked = 0
    for module in learner.modules():
        if isinstance(module, torch.nn.Conv2d):
            parameters = [module.weight]
        elif isinstance(module, torch.nn.BatchNorm2d):
            parameters = [module.weight, module.bias]
        else:
            continue
        for parameter in parameters:
            assert float(parameter.grad.abs().sum()) > 0
            checked += 1
    assert checked == 4 * 3


def test_wrong_item_shape_raises() -> None:
    learner = build_learner("protonet", {"hidden": 8}, (1, 28, 28))
    episode = _random_batch(1, 2, 1, 1, size=16).unbatch()[0]
    with pytest.raises(KShotError, match="shape"):
        learner(episode.support_x, episode.support_y, episode.query_x)
    knn = build_learner("knn", {}, (1, 28, 28))
    with pytest.raises(KShotError, match="shape"):
        knn(episode.support_x, episode.support_y, episode.query_x)


def test_registry_and_unknown_names() -> None:
    assert {"protonet", "knn"} <= set(METHODS)
    assert get_method("protonet") is ProtoNet and get_method("knn") is KNN
    with pytest.raises(KShotError, match="unknown method"):
        get_method("no-such-method")
    with pytest.raises(KShotError, match="unknown method"):
        build_learner("no-such-method", {}, (1, 28, 28))
    with pytest.raises(KShotError, match="unknown backbone"):
        build_learner("protonet", {"backbone": "resnet-9000"}, (1, 28, 28))
    with pytest.raises(KShotError, match="--distance must be one of"):
        build_learner("protonet", {"distance": "manhattan"}, (1, 28, 28))
    with pytest.raises(KShotError, match="unknown option"):
        build_learner("protonet", {"hiden": 8}, (1, 28, 28))
    with pytest.raises(KShotError, match="--metric must be one of"):
        build_learner("knn", {"metric": "manhattan"}, (1, 28, 28))
    with pytest.raises(KShotError, match="--k must be >= 1"):
        build_learner("knn", {"k": 0}, (1, 28, 28))


def test_errors_are_value_errors() -> None:
    assert issubclass(KShotError, ValueError)


# --- kNN ---------------------------------------------------------------------------------------


def _points(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(1)  # [S, 1]: one-feature items


# 1-D support: class 0 at 0 and -3, class 1 at 2 and 2.2; query at 0.8
# distances: 0.8 (class 0), 1.2 (class 1), 1.4 (class 1), 3.8 (class 0)
LINE_SUPPORT = _points([0.0, 2.0, 2.2, -3.0])
LINE_LABELS = torch.tensor([0, 1, 1, 0])
LINE_QUERY = _points([0.8])


def test_knn_k1_and_k3_disagree() -> None:
    one = build_learner("knn", {"k": 1}, (1,))
    three = build_learner("knn", {"k": 3}, (1,))
    assert one(LINE_SUPPORT, LINE_LABELS, LINE_QUERY).argmax(-1).tolist() == [0]
    assert three(LINE_SUPPORT, LINE_LABELS, LINE_QUERY).argmax(-1).tolist() == [1]


def test_knn_softmax_is_vote_share() -> None:
    three = build_learner("knn", {"k": 3}, (1,))
    shares = three(LINE_SUPPORT, LINE_LABELS, LINE_QUERY).softmax(-1)
    assert torch.allclose(shares, torch.tensor([[1 / 3, 2 / 3]]), atol=2e-3)
    one = build_learner("knn", {"k": 1}, (1,))
    assert torch.allclose(one(LINE_SUPPORT, LINE_LABELS, LINE_QUERY).softmax(-1),
                          torch.tensor([[1.0, 0.0]]), atol=1e-4)


def test_knn_tie_goes_to_nearer_neighbour() -> None:
    # k=2, one vote each: class 1 is nearer (0.8) than class 0 (1.2), so class 1 wins even though
    # a plain arg-max over a tie would pick the lower label
    learner = build_learner("knn", {"k": 2}, (1,))
    logits = learner(_points([0.0, 2.0]), torch.tensor([1, 0]), LINE_QUERY)
    assert logits.argmax(-1).tolist() == [1]
    assert torch.allclose(logits.softmax(-1), torch.tensor([[0.5, 0.5]]), atol=2e-3)
    # and the other way round
    logits = learner(_points([2.0, 0.0]), torch.tensor([1, 0]), LINE_QUERY)
    assert logits.argmax(-1).tolist() == [0]


def test_knn_tie_goes_to_class_with_nearest_neighbour_k5() -> None:
    # k=5, neighbours by rank: 1 -> class 1, 2 -> class 0, 3 -> class 0, 4 -> class 2,
    # 5 -> class 1. Classes 0 and 1 tie with two votes each; class 1 has the nearest neighbour, so
    # by the documented rule ("ties between classes go to the class with the nearer neighbour")
    # it must win (a bonus linear in the rank would give it to class 0, whose rank sum is smaller).
    learner = build_learner("knn", {"k": 5}, (1,))
    support = _points([1.0, 2.0, 3.0, 4.0, 5.0])
    logits = learner(support, torch.tensor([1, 0, 0, 2, 1]), _points([0.0]))
    assert logits.argmax(-1).tolist() == [1]


def test_knn_tie_break_holds_for_far_ranks() -> None:
    # k=16: ranks 0-9 are single votes for classes 2..11; class 1 at ranks 10 and 15, class 0 at
    # ranks 11 and 12, ranks 13-14 single votes for classes 12, 13. Classes 0 and 1 tie with two
    # votes; class 1 has the nearer neighbour (rank 10) and must win.
    labels = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 0, 0, 12, 13, 1]
    learner = build_learner("knn", {"k": 16}, (1,))
    support = _points([float(rank + 1) for rank in range(16)])
    logits = learner(support, torch.tensor(labels), _points([0.0]))
    assert logits.argmax(-1).tolist() == [1]


def test_knn_cosine_metric() -> None:
    # euclidean: [1, 0.2] is nearest [1, 1] (class 1); by angle it is nearest [10, 0] (class 0)
    support = torch.tensor([[10.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[1.0, 0.2]])
    euclidean = build_learner("knn", {"k": 1}, (2,))
    cosine = build_learner("knn", {"k": 1, "metric": "cosine"}, (2,))
    assert euclidean(support, labels, query).argmax(-1).tolist() == [1]
    assert cosine(support, labels, query).argmax(-1).tolist() == [0]


def test_knn_k_larger_than_support_is_clipped() -> None:
    learner = build_learner("knn", {"k": 50}, (1,))
    shares = learner(LINE_SUPPORT[:3], LINE_LABELS[:3], LINE_QUERY).softmax(-1)
    assert torch.allclose(shares, torch.tensor([[1 / 3, 2 / 3]]), atol=2e-3)


def test_knn_batched_equals_per_episode() -> None:
    learner = build_learner("knn", {"k": 3}, (1, 6, 6))
    batch = _random_batch(3, n_way=3, k_shot=2, n_query=2, size=6)
    batched = learner(batch.support_x, batch.support_y, batch.query_x)
    assert batched.shape == (3, 6, 3)
    for index, episode in enumerate(batch.unbatch()):
        single = learner(episode.support_x, episode.support_y, episode.query_x)
        assert torch.allclose(batched[index], single)


def test_knn_has_nothing_to_train() -> None:
    learner = build_learner("knn", {}, (1, 2, 2))
    assert not learner.trainable
    with pytest.raises(KShotError, match="nothing to train"):
        learner.loss(_pixel_episode())


# --- backbones ---------------------------------------------------------------------------------


def test_conv4_out_dim() -> None:
    assert Conv4(1, 28).out_dim == 64
    assert Conv4(1, 105).out_dim == 64 * 6 * 6 == 2304
    assert Conv4(1, 28, hidden=8).out_dim == 8
    with torch.no_grad():
        assert Conv4(1, 28).eval()(torch.rand(2, 1, 28, 28)).shape == (2, 64)
        assert Conv4(1, 105, hidden=8).eval()(torch.rand(1, 1, 105, 105)).shape == (1, 8 * 36)


def test_lenet_out_shape() -> None:
    lenet = LeNet(1, 28)
    assert lenet.out_dim == 128
    with torch.no_grad():
        assert lenet(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    assert build_backbone("lenet", (1, 28, 28))(torch.rand(2, 1, 28, 28)).shape == (2, 128)


def test_pixels_backbone_flattens() -> None:
    flatten = build_backbone("pixels", (1, 3, 3))
    assert flatten.out_dim == 9
    images = torch.arange(18.0).view(2, 1, 3, 3)
    assert torch.equal(flatten(images), images.view(2, 9))


def test_too_small_images_raise() -> None:
    with pytest.raises(KShotError, match="at least 16"):
        build_backbone("conv4", (1, 8, 8))
    with pytest.raises(KShotError, match="at least 16"):
        build_backbone("lenet", (1, 12, 12))
    with pytest.raises(KShotError, match="square"):
        build_backbone("conv4", (1, 28, 20))
    with pytest.raises(KShotError, match="square"):
        build_backbone("conv4", (4,))


def test_backbone_registry() -> None:
    assert set(BACKBONES) == {"conv4", "lenet", "booknet", "pixels"}
    assert isinstance(build_backbone("conv4", (3, 32, 32), hidden=4), Conv4)
    with pytest.raises(KShotError, match="unknown backbone"):
        build_backbone("vgg", (1, 28, 28))


def test_cross_entropy_matches_functional() -> None:
    # the base loss reshapes batched logits [B, Q, N] to [B*Q, N]: same as the per-row mean
    learner = build_learner("protonet", {"backbone": "pixels"}, (1, 2, 2))
    single = _pixel_episode()
    batch = Episode.stack([single, single])
    loss, _ = learner.loss(batch)
    logits = learner(single.support_x, single.support_y, single.query_x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, single.query_y).item(), rel=1e-6)
