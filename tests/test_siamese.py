"""kshot.nn.losses (distances, contrastive and triplet losses, miners, Koch's head), the Siamese
learner, the booknet backbone and the chapter-2 Siamese MNIST demo.

Loss values and mined triplets are checked against hand computations on tiny 1-d batches; two
learning tests train Siamese networks on real Omniglot within a small budget.
"""

from __future__ import annotations

import argparse
import time
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kshot.cli.common import add_config_options, collect_config
from kshot.data.episodes import Episode, EpisodeSampler
from kshot.demos import (
    SiameseMnistConfig,
    balanced_pairs,
    format_siamese_mnist,
    siamese_mnist,
)
from kshot.errors import KShotError
from kshot.evaluate import evaluate
from kshot.methods import METHODS, Siamese, SiameseConfig, build_learner
from kshot.methods.base import accuracy
from kshot.methods.siamese import class_scores
from kshot.nn.backbones import BookNet, build_backbone
from kshot.nn.losses import (
    KochHead,
    all_triplets,
    balanced_bce,
    balanced_mean,
    contrastive_loss,
    hard_triplets,
    mine_triplets,
    mined_triplet_loss,
    pair_mask,
    paired_distances,
    pairwise_distances,
    semihard_triplets,
    triplet_loss,
    triplet_loss_from_distances,
    weighted_l1_verification,
)
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


# --- distances ----------------------------------------------------------------------------------


def test_pairwise_distances_hand_computed() -> None:
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(pairwise_distances(a, b, "euclidean"),
                          torch.tensor([[0.0, 3.0, 2.0], [5.0, 4.0, 3.60555128]]))
    assert torch.allclose(pairwise_distances(a, b, "sqeuclidean"),
                          torch.tensor([[0.0, 9.0, 4.0], [25.0, 16.0, 13.0]]))
    # cosine: (3,4) vs (3,0): 1 - 3/5; vs (0,2): 1 - 4/5; the zero vector has cosine 0
    assert torch.allclose(pairwise_distances(a[1:], b[1:], "cosine"), torch.tensor([[0.4, 0.2]]))
    with pytest.raises(KShotError, match="unknown distance"):
        pairwise_distances(a, b, "manhattan")


def test_pairwise_distances_batched_and_paired() -> None:
    a, b = torch.randn(3, 5, 4), torch.randn(3, 6, 4)
    for kind in ("euclidean", "sqeuclidean", "cosine"):
        batched = pairwise_distances(a, b, kind)
        assert batched.shape == (3, 5, 6)
        assert torch.allclose(batched[1], pairwise_distances(a[1], b[1], kind), atol=1e-5)
        assert torch.allclose(paired_distances(a, b[:, :5], kind),
                              batched.diagonal(dim1=-2, dim2=-1), atol=1e-5)
    assert torch.allclose(pairwise_distances(a, b), torch.cdist(a, b), atol=1e-4)


def test_euclidean_gradient_finite_at_zero_distance() -> None:
    points = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    distances = pairwise_distances(points, points)
    assert float(distances[0, 1].detach()) == 0.0 and float(distances[0, 0].detach()) == 0.0
    distances.sum().backward()
    assert bool(torch.isfinite(points.grad).all())
    paired = torch.tensor([[1.0, 1.0]], requires_grad=True)
    paired_distances(paired, paired.detach().clone()).sum().backward()
    assert bool(torch.isfinite(paired.grad).all())


# --- contrastive loss ---------------------------------------------------------------------------


def test_contrastive_loss_hand_computed_both_label_ends() -> None:
    margin = 2.0
    distances = torch.tensor([0.0, 1.5, 0.0, 0.5, 2.0, 3.0])
    same = torch.tensor([True, True, False, False, False, False])
    per_pair = contrastive_loss(distances, same, margin, reduction="none")
    expected = torch.tensor([
        0.0,  # similar at D = 0
        0.5 * 1.5**2,  # similar at D: ½D²
        0.5 * 2.0**2,  # dissimilar at 0 < m: ½(m − D)²
        0.5 * 1.5**2,  # dissimilar at 0.5: ½(2 − 0.5)²
        0.0,  # dissimilar at D = m
        0.0,  # dissimilar beyond the margin
    ])
    assert torch.allclose(per_pair, expected)
    assert contrastive_loss(distances, same, margin).item() == pytest.approx(expected.mean().item())
    # the book's label: Y = 0 similar, Y = 1 dissimilar is ``same = Y == 0``
    book_y = torch.tensor([0, 0, 1, 1, 1, 1])
    assert torch.equal(contrastive_loss(distances, book_y == 0, margin, reduction="none"), per_pair)


def test_balanced_mean_weighs_both_sides_equally() -> None:
    values = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.0, 10.0])
    positive = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    assert balanced_mean(values, positive, ~positive).item() == pytest.approx((2.0 + 10.0) / 2)
    assert balanced_mean(values, positive, torch.zeros(6, dtype=torch.bool)).item() == 2.0


# --- miners -------------------------------------------------------------------------------------

# five 1-d embeddings, class 0 at 0, 1, 5 and class 1 at 2.75, 8 (no ties in what is mined):
#   d(0, .) = [0, 1, 5, 2.75, 8]      d(1, .) = [1, 0, 4, 1.75, 7]     d(2, .) = [5, 4, 0, 2.25, 3]
#   d(3, .) = [2.75, 1.75, 2.25, 0, 5.25]                              d(4, .) = [8, 7, 3, 5.25, 0]
POINTS = torch.tensor([[0.0], [1.0], [5.0], [2.75], [8.0]])
LABELS = torch.tensor([0, 0, 0, 1, 1])
DISTANCES = pairwise_distances(POINTS, POINTS)


def test_pair_mask_hand_computed() -> None:
    positive, negative = pair_mask(torch.tensor([0, 1, 0]))
    assert torch.equal(positive, torch.tensor([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool))
    assert torch.equal(negative, torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool))


def test_batch_all_picks_every_valid_triplet() -> None:
    triplets = all_triplets(LABELS)
    labels = LABELS.tolist()
    expected = {(0, a, p, n) for a, p, n in product(range(5), repeat=3)
                if a != p and labels[a] == labels[p] and labels[a] != labels[n]}
    assert len(expected) == 3 * 2 * 2 + 2 * 1 * 3  # anchors x positives x negatives
    assert triplets.as_set() == expected and len(triplets) == len(expected)


def test_batch_hard_picks_farthest_positive_and_nearest_negative() -> None:
    triplets = hard_triplets(DISTANCES, LABELS)
    assert triplets.as_set() == {(0, 0, 2, 3), (0, 1, 2, 3), (0, 2, 0, 3), (0, 3, 4, 1),
                                 (0, 4, 3, 2)}


def test_semihard_picks_nearest_farther_negative_else_farthest() -> None:
    triplets = semihard_triplets(DISTANCES, LABELS)
    assert triplets.as_set() == {
        (0, 0, 1, 3),  # d_ap 1: negatives 2.75, 8 farther; the nearest
        (0, 0, 2, 4),  # d_ap 5: only 8 is farther
        (0, 1, 0, 3),  # d_ap 1: 1.75 and 7 farther
        (0, 1, 2, 4),  # d_ap 4: only 7
        (0, 2, 0, 4),  # d_ap 5: none farther (2.25, 3): fall back to the farthest
        (0, 2, 1, 4),  # d_ap 4: none farther: the farthest
        (0, 3, 4, 0),  # d_ap 5.25: none farther (2.75, 1.75, 2.25): the farthest
        (0, 4, 3, 1),  # d_ap 5.25: 8 and 7 farther; the nearest
    }


def test_miners_stay_within_each_episode() -> None:
    labels = torch.stack([LABELS, torch.tensor([1, 1, 0, 0, 1])])
    distances = torch.stack([DISTANCES, DISTANCES])
    for mining in ("all", "hard", "semihard"):
        batched = mine_triplets(distances, labels, mining)
        single = [mine_triplets(distances[b], labels[b], mining) for b in range(2)]
        expected = {(b, *t[1:]) for b in range(2) for t in single[b].as_set()}
        assert batched.as_set() == expected
        batch = batched.batch
        for index in (batched.anchor, batched.positive, batched.negative):
            assert bool((index < 5).all())
        assert bool((labels[batch, batched.anchor] == labels[batch, batched.positive]).all())
        assert bool((labels[batch, batched.anchor] != labels[batch, batched.negative]).all())
    with pytest.raises(KShotError, match="mining"):
        mine_triplets(DISTANCES, LABELS, "easy")


# --- triplet loss -------------------------------------------------------------------------------


def test_triplet_loss_tiny_hand_case() -> None:
    # a = 0, p = 1 (class 0), n = 1.2 (class 1), margin 0.5:
    # (0, 1, 2): 1 − 1.2 + .5 = 0.3; (1, 0, 2): 1 − 0.2 + .5 = 1.3; anchor 2 has no positive
    embeddings, labels = torch.tensor([[0.0], [1.0], [1.2]]), torch.tensor([0, 0, 1])
    for mining in ("all", "hard", "semihard"):
        assert triplet_loss(embeddings, labels, 0.5, mining).item() == pytest.approx(0.8)
    # everything satisfied: 0
    far = torch.tensor([[0.0], [1.0], [3.0]])
    assert triplet_loss(far, labels, 0.5, "all").item() == 0.0


def test_triplet_loss_values_per_mining() -> None:
    margin = 0.5
    # hard: 5 − 2.75, 4 − 1.75, 5 − 2.25, 5.25 − 1.75, 5.25 − 3, each + 0.5
    assert triplet_loss(POINTS, LABELS, margin, "hard").item() == pytest.approx(15.5 / 5)
    # semihard: only (2,0,4) 2.5, (2,1,4) 1.5 and (3,4,0) 3.0 are positive, mean over all 8
    assert triplet_loss(POINTS, LABELS, margin, "semihard").item() == pytest.approx(7.0 / 8)
    # all: the mean over the triplets with a positive loss (Hermans et al.)
    d = DISTANCES.tolist()
    losses = [max(0.0, d[a][p] - d[a][n] + margin) for _, a, p, n in all_triplets(LABELS).as_set()]
    positive = [value for value in losses if value > 0]
    assert 0 < len(positive) < len(losses)
    assert triplet_loss(POINTS, LABELS, margin, "all").item() == pytest.approx(
        sum(positive) / len(positive))
    # squared distances change the values: hard, anchor 0: 25 − 7.5625 + .5
    squared = triplet_loss(POINTS[:4], LABELS[:4], margin, "hard", distance="sqeuclidean")
    assert squared.item() == pytest.approx(np.mean([25 - 7.5625, 16 - 3.0625, 25 - 5.0625]) + 0.5)


def test_dense_batch_all_matches_the_mined_triplets() -> None:
    embeddings = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 12), generator=torch.Generator().manual_seed(1))
    distances = pairwise_distances(embeddings, embeddings)
    for margin in (0.1, 1.0, 10.0):
        dense = mined_triplet_loss(distances, labels, margin, "all")
        mined = triplet_loss_from_distances(distances, all_triplets(labels), margin,
                                            positive_only=True)
        assert dense.item() == pytest.approx(mined.item(), rel=1e-5)


def test_triplet_loss_without_triplets_is_zero_with_a_graph() -> None:
    for mining in ("all", "hard", "semihard"):
        embeddings = torch.randn(3, 4, requires_grad=True)
        loss = triplet_loss(embeddings, torch.tensor([0, 1, 2]), 0.2, mining)
        assert loss.item() == 0.0
        loss.backward()


# --- Koch's verification head -------------------------------------------------------------------


def test_koch_head_formula_shape_and_range() -> None:
    head = KochHead(3)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.linear.bias.fill_(0.25)
    h1, h2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 4.0, 1.0])
    # 1·|1| − 2·|−2| + 0.5·|2| + 0.25 = −1.75
    assert head(h1, h2).item() == pytest.approx(-1.75)
    assert weighted_l1_verification(h1, h2, head.linear.weight[0], head.linear.bias[0]).item() \
        == pytest.approx(-1.75)
    a, b = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    logits = head.pairwise(a, b)
    assert logits.shape == (2, 4, 5)
    assert logits[1, 2, 3].item() == pytest.approx(head(a[1, 2], b[1, 3]).item(), rel=1e-5)
    probability = torch.sigmoid(logits)
    assert bool(((probability > 0) & (probability < 1)).all())


def test_koch_head_starts_as_a_nearest_neighbour_rule() -> None:
    head = KochHead(16)
    a = torch.randn(6, 16)
    logits = head.pairwise(a, a)
    assert torch.allclose(logits.diagonal(), torch.full((6,), 2.0))  # √16 / 2 at distance 0
    assert torch.allclose(logits, 2.0 - torch.cdist(a, a, p=1), atol=1e-5)


def test_balanced_bce_hand_computed() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0, -1.0, -1.0])
    same = torch.tensor([True, True, False, False, False])
    bce = F.binary_cross_entropy_with_logits(logits, same.float(), reduction="none")
    expected = (bce[:2].mean() + bce[2:].mean()) / 2
    assert balanced_bce(logits, same).item() == pytest.approx(expected.item())


# --- booknet ------------------------------------------------------------------------------------


def test_booknet_is_the_books_network() -> None:
    net = build_backbone("booknet", (1, 28, 28))
    assert isinstance(net, BookNet) and net.out_dim == 2
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 2)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(800, 500), (500, 10), (10, 2)]
    conv = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size) for m in conv] == [(20, (5, 5)), (50, (5, 5))]
    assert build_backbone("booknet", (1, 28, 28), embedding_dim=5).out_dim == 5
    with pytest.raises(KShotError, match="16 pixels"):
        build_backbone("booknet", (1, 12, 12))


# --- the Siamese learner ------------------------------------------------------------------------


def _episode(n_way: int = 3, k_shot: int = 2, n_query: int = 2, size: int = 4,
             seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.rand(n_way * k_shot, 1, size, size, generator=generator)
    query_x = torch.rand(n_way * n_query, 1, size, size, generator=generator)
    return Episode(support_x, torch.arange(n_way).repeat_interleave(k_shot), query_x,
                   torch.arange(n_way).repeat_interleave(n_query), n_way, k_shot)


def test_siamese_registered_and_configured() -> None:
    assert METHODS["siamese"] is Siamese
    config = SiameseConfig()
    assert (config.loss, config.mining, config.distance, config.normalize) == \
        ("triplet", "semihard", "euclidean", True)
    assert config.effective_margin == 0.2
    assert SiameseConfig(loss="contrastive").effective_margin == 1.0
    assert SiameseConfig(loss="contrastive", margin=0.5).effective_margin == 0.5


@pytest.mark.parametrize("bad, option", [
    ({"margin": -0.1}, "--margin"),
    ({"margin": float("nan")}, "--margin"),
    ({"mining": "hardest"}, "--mining"),
    ({"loss": "arcface"}, "--loss"),
    ({"distance": "manhattan"}, "--distance"),
    ({"hidden": 0}, "--hidden"),
    ({"embedding_dim": -1}, "--embedding-dim"),
    ({"backbone": "vgg"}, "--backbone"),
])
def test_bad_config_raises(bad: dict, option: str) -> None:
    with pytest.raises(KShotError, match=option):
        SiameseConfig(**bad)
    with pytest.raises(KShotError, match=option):
        build_learner("siamese", bad, (1, 28, 28))


def test_cli_options_come_from_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_config_options(parser, SiameseConfig, "m_")
    args = parser.parse_args(["--loss", "koch", "--mining", "hard", "--no-normalize",
                              "--margin", "0.5", "--embedding-dim", "32"])
    config = SiameseConfig(**collect_config(args, "m_"))
    assert (config.loss, config.mining, config.normalize, config.margin, config.embedding_dim) == \
        ("koch", "hard", False, 0.5, 32)


def test_embedding_sizes() -> None:
    assert build_learner("siamese", {"hidden": 8}, (1, 28, 28)).out_dim == 8
    projected = build_learner("siamese", {"hidden": 8, "embedding_dim": 5}, (1, 28, 28))
    assert projected.out_dim == 5 and projected.backbone(torch.rand(2, 1, 28, 28)).shape == (2, 5)
    book = build_learner("siamese", {"backbone": "booknet", "normalize": False}, (1, 28, 28))
    assert book.out_dim == 2
    wider = build_learner("siamese", {"backbone": "booknet", "embedding_dim": 4}, (1, 28, 28))
    assert wider.out_dim == 4 and wider.backbone[0].out_dim == 4  # the last layer, no projection
    normalized = projected.backbone(torch.rand(3, 1, 28, 28))
    assert torch.allclose(normalized.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_forward_is_the_nearest_support_item() -> None:
    episode = _episode()
    learner = build_learner("siamese", {"backbone": "pixels", "normalize": False}, (1, 4, 4))
    logits = learner(episode.support_x, episode.support_y, episode.query_x)
    assert logits.shape == (6, 3)
    distances = torch.cdist(episode.query_x.flatten(1), episode.support_x.flatten(1))  # [Q, S]
    nearest_label = episode.support_y[distances.argmin(1)]
    assert torch.equal(logits.argmax(-1), nearest_label)
    # each class's logit is minus the distance to its nearest support item
    per_class = -distances.view(6, 3, 2).amin(-1)
    assert torch.allclose(logits, per_class, atol=1e-5)
    batch = Episode.stack([episode, _episode(seed=1)])
    batched = learner(batch.support_x, batch.support_y, batch.query_x)
    assert batched.shape == (2, 6, 3)
    assert torch.allclose(batched[0], logits, atol=1e-6)


def test_class_scores_handles_unordered_support() -> None:
    scores = torch.tensor([[[0.1, 0.9, 0.3, 0.2]]])  # [1, 1 query, 4 support items]
    support_y = torch.tensor([[1, 0, 1, 0]])
    assert torch.allclose(class_scores(scores, support_y, 2), torch.tensor([[[0.9, 0.3]]]))


def test_koch_forward_is_the_best_verification_score() -> None:
    episode = _episode()
    learner = build_learner("siamese", {"backbone": "pixels", "loss": "koch"}, (1, 4, 4))
    logits = learner(episode.support_x, episode.support_y, episode.query_x)
    assert logits.shape == (6, 3)
    embed = learner.backbone
    pair_logits = learner.head.pairwise(embed(episode.query_x), embed(episode.support_x))
    assert torch.allclose(logits, pair_logits.view(6, 3, 2).amax(-1), atol=1e-5)
    batch = Episode.stack([episode, episode])
    assert learner(batch.support_x, batch.support_y, batch.query_x).shape == (2, 6, 3)


@pytest.mark.parametrize("loss, mining", [("contrastive", "all"), ("triplet", "all"),
                                          ("triplet", "hard"), ("triplet", "semihard"),
                                          ("koch", "all")])
def test_loss_metrics_and_gradients(loss: str, mining: str) -> None:
    torch.manual_seed(0)
    learner = build_learner("siamese", {"loss": loss, "mining": mining, "hidden": 8}, (1, 28, 28))
    single = _episode(n_way=4, k_shot=1, n_query=3, size=28)
    batch = Episode.stack([single, _episode(n_way=4, k_shot=1, n_query=3, size=28, seed=3)])
    for episode in (single, batch):
        value, metrics = learner.loss(episode)
        assert value.ndim == 0 and bool(torch.isfinite(value))
        assert set(metrics) == {"loss", "accuracy"}
        # the accuracy is forward's on the same episode (same items: same batch-norm statistics)
        logits = learner(episode.support_x, episode.support_y, episode.query_x)
        assert metrics["accuracy"] == pytest.approx(accuracy(logits, episode.query_y))
        learner.zero_grad()
        value.backward()
        grads = [p.grad for p in learner.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_contrastive_loss_of_the_learner_by_hand() -> None:
    # pixels, no normalisation: the loss is the balanced contrastive loss of the raw items
    learner = build_learner("siamese", {"backbone": "pixels", "loss": "contrastive",
                                        "normalize": False, "margin": 1.8}, (1, 1, 1))
    support_x = torch.tensor([0.0, 2.0]).view(2, 1, 1, 1)
    query_x = torch.tensor([0.5, 2.5]).view(2, 1, 1, 1)
    episode = Episode(support_x, torch.tensor([0, 1]), query_x, torch.tensor([0, 1]), 2, 1)
    # items 0, 2, 0.5, 2.5 with labels 0, 1, 0, 1: the same-class pairs are both at 0.5; the
    # different-class pairs at 2, 2.5, 1.5 and 2: only 1.5 is inside the margin 1.8
    same_loss = 0.5 * 0.5**2
    different_loss = np.mean([0.0, 0.0, 0.5 * (1.8 - 1.5) ** 2, 0.0])
    value, metrics = learner.loss(episode)
    assert value.item() == pytest.approx((same_loss + different_loss) / 2)
    assert metrics["accuracy"] == 1.0


# --- learning on Omniglot -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def omniglot(shared_data, tmp_path_factory):
    """Omniglot's published split at 28 px, decoded once for this module."""
    from kshot.data.omniglot import load_omniglot

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(tmp_path_factory.mktemp("siamese-cache")))
        return {subset: load_omniglot("vinyals", subset, 28, data_dir=shared_data,
                                      progress=False) for subset in ("train", "test")}


def _learns(omniglot, tmp_path, method_config: dict, episodes: int) -> tuple[float, float]:
    """Train 16-way 1-shot 3-query episodes; 5-way 1-shot accuracy before and after."""
    train, test = omniglot["train"], omniglot["test"]
    torch.manual_seed(0)
    learner = build_learner("siamese", method_config, train.item_shape)
    untrained = evaluate(learner, EpisodeSampler(test, 5, 1, 5, seed=7), 60)
    config = TrainConfig(episodes=episodes, ways=16, shots=1, queries=3, val_episodes=0,
                         time_budget=35, seed=0)
    started = time.monotonic()
    Trainer(learner, config, tmp_path / "run", train, progress=False).fit()
    seconds = time.monotonic() - started
    report = evaluate(learner, EpisodeSampler(test, 5, 1, 5, seed=123), 100)
    print(f"\nsiamese {method_config} after {seconds:.0f} s: {report.accuracy:.2%} ± "
          f"{report.ci95:.2%} (untrained {untrained.accuracy:.2%})")
    return untrained.accuracy, report.accuracy


def test_siamese_triplet_learns_unseen_omniglot_characters(omniglot, tmp_path) -> None:
    untrained, trained = _learns(omniglot, tmp_path, {}, episodes=150)
    assert trained > 0.75, trained  # measured ~0.90; chance is 0.20
    assert trained > untrained + 0.15


def test_siamese_koch_learns_unseen_omniglot_characters(omniglot, tmp_path) -> None:
    untrained, trained = _learns(omniglot, tmp_path, {"loss": "koch"}, episodes=120)
    assert trained > 0.65, trained  # measured ~0.85; chance is 0.20
    assert trained > untrained + 0.1


# --- the chapter-2 demo -------------------------------------------------------------------------


def test_balanced_pairs() -> None:
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0])
    first, second, same = balanced_pairs(labels, torch.Generator().manual_seed(0))
    assert len(first) == 16 and int(same.sum()) == 8
    assert torch.equal(labels[first] == labels[second], same)
    assert bool((first != second).all())
    assert torch.equal(first.sort().values, torch.arange(8).repeat_interleave(2))
    again = balanced_pairs(labels, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip((first, second, same), again, strict=True))


def test_siamese_mnist_demo_small_budget(shared_data, tmp_path) -> None:
    config = SiameseMnistConfig(train_images=300, plot_images=120, epochs=2, seed=3,
                                out_dir=str(tmp_path / "out"))
    result = siamese_mnist(config, data_dir=shared_data)
    for path in (result.embedding_plot, result.loss_plot):
        assert path.is_file()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert len(result.train_indices) == 300 and len(result.heldout_indices) == 120
    assert not set(result.train_indices.tolist()) & set(result.heldout_indices.tolist())
    assert result.pairs_per_epoch == 600 and len(result.epoch_losses) == 2
    assert len(result.batch_losses) == 2 * 5  # 600 pairs in batches of 128
    assert 0.0 <= result.heldout_accuracy <= 1.0
    text = format_siamese_mnist(result)
    assert "disjoint" in text and str(result.embedding_plot) in text
    repeat = siamese_mnist(SiameseMnistConfig(train_images=300, plot_images=120, epochs=1, seed=3,
                                              out_dir=str(tmp_path / "again")),
                           data_dir=shared_data)
    assert np.array_equal(repeat.train_indices, result.train_indices)
    assert repeat.batch_losses == result.batch_losses[:5]  # seeded: the same first epoch


def test_siamese_mnist_config_validation() -> None:
    with pytest.raises(KShotError, match="--epochs"):
        SiameseMnistConfig(epochs=0)
    with pytest.raises(KShotError, match="--margin"):
        SiameseMnistConfig(margin=0.0)
    with pytest.raises(KShotError, match="--train-images"):
        SiameseMnistConfig(train_images=5)
