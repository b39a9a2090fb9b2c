"""Matching Networks: the attention arithmetic, full-context embeddings (shapes, gradients, the
order of the support set), the shuffled episodes they train and score on, and learning on Omniglot."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from kshot.data.episodes import EpisodeSampler
from kshot.data.omniglot import load_omniglot
from kshot.errors import KShotError
from kshot.evaluate import evaluate
from kshot.methods import build_learner
from kshot.methods.matching import MatchingConfig, MatchingNetwork, QueryContext, SupportContext
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _pixels(fce: bool, scale: float = 1.0, steps: int = 3) -> MatchingNetwork:
    torch.manual_seed(0)
    return build_learner("matching", {"backbone": "pixels", "fce": fce, "scale": scale,
                                      "processing_steps": steps}, (4,))


def test_without_fce_probabilities_are_attention_mixed_labels() -> None:
    """P(y | x̂, S) = Σᵢ softmax(scale · cos(x̂, xᵢ)) yᵢ, computed by hand."""
    learner = _pixels(fce=False, scale=3.0)
    support = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
    labels = torch.tensor([0, 1, 0, 2])
    query = torch.tensor([[1.0, 0.2, 0, 0], [0, 0, 1, 1]])
    log_probs = learner(support, labels, query)
    cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).T
    attention = torch.softmax(3.0 * cosine, dim=-1)
    expected = attention @ F.one_hot(labels, 3).float()
    torch.testing.assert_close(log_probs.exp(), expected)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2))


def test_loss_is_negative_log_probability_of_the_label() -> None:
    learner = _pixels(fce=True)
    sampler = EpisodeSampler(_toy_dataset(), 3, 2, 2, seed=1, shuffle=True)
    episode = sampler.episode(0)
    loss, metrics = learner.loss(episode)
    log_probs = learner(episode.support_x, episode.support_y, episode.query_x)
    expected = -log_probs.gather(1, episode.query_y[:, None]).mean()
    torch.testing.assert_close(loss, expected)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_fce_shapes_and_gradients_reach_every_part() -> None:
    torch.manual_seed(0)
    learner = build_learner("matching", {"hidden": 8, "processing_steps": 4}, (1, 28, 28))
    support_x, query_x = torch.rand(2, 10, 1, 28, 28), torch.rand(2, 6, 1, 28, 28)
    support_y = torch.tensor([0, 1, 2, 3, 4] * 2).expand(2, -1)
    logits = learner(support_x, support_y, query_x)
    assert logits.shape == (2, 6, 5)
    loss = F.cross_entropy(logits.reshape(-1, 5), torch.randint(0, 5, (12,)))
    loss.backward()
    for part in (learner.backbone, learner.support_context, learner.query_context):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    # the context modules keep the embedding size
    emb = torch.rand(3, 7, 16)
    assert SupportContext(16)(emb).shape == (3, 7, 16)
    assert QueryContext(16, 2)(torch.rand(3, 5, 16), emb).shape == (3, 5, 16)


def test_support_context_has_the_skip_connection() -> None:
    """g(xᵢ, S) = h→ᵢ + h←ᵢ + g'(xᵢ): with the LSTM's output weights zeroed, g is the identity."""
    context = SupportContext(6)
    with torch.no_grad():
        for name, parameter in context.lstm.named_parameters():
            if name.startswith("bias"):
                # output gate closed: h = o ⊙ tanh(c) = 0
                parameter.zero_()
                parameter[18:24] = -1e4
    embeddings = torch.randn(2, 5, 6)
    torch.testing.assert_close(context(embeddings), embeddings)


def test_batched_forward_equals_per_episode() -> None:
    learner = _pixels(fce=True)
    batch = EpisodeSampler(_toy_dataset(), 3, 2, 2, seed=4, shuffle=True).batch([0, 1, 2])
    batched = learner(batch.support_x, batch.support_y, batch.query_x)
    for b, episode in enumerate(batch.unbatch()):
        single = learner(episode.support_x, episode.support_y, episode.query_x)
        torch.testing.assert_close(batched[b], single)


def test_permuting_the_support_set() -> None:
    """Without FCE any permutation of the support set leaves every prediction unchanged; with FCE
    the bi-LSTM reads the set in order, so the log-probabilities change (the learner says so)."""
    support = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    query = torch.randn(5, 4)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    plain, contextual = _pixels(fce=False), _pixels(fce=True)
    torch.testing.assert_close(plain(support, labels, query),
                               plain(support[order], labels[order], query))
    assert not plain.order_sensitive
    assert contextual.order_sensitive
    before = contextual(support, labels, query)
    after = contextual(support[order], labels[order], query)
    assert not torch.allclose(before, after, atol=1e-5)


def test_fce_learner_is_trained_and_scored_on_shuffled_episodes(tmp_path) -> None:
    data = _toy_dataset()
    trainer = Trainer(_pixels(fce=True), TrainConfig(episodes=2, ways=3, shots=2, queries=2,
                                                     val_episodes=5, val_ways=3, val_queries=2), tmp_path, data, data,
                      progress=False)
    assert trainer.train_sampler.shuffle and trainer.val_sampler.shuffle
    plain = Trainer(_pixels(fce=False), TrainConfig(episodes=2, ways=3, shots=2, queries=2),
                    tmp_path / "plain", data, progress=False)
    assert not plain.train_sampler.shuffle
    # evaluate shuffles for an order-sensitive learner: the same score as on shuffled episodes
    sampler = EpisodeSampler(data, 3, 2, 2, seed=9)
    learner = _pixels(fce=True)
    assert (evaluate(learner, sampler, 20).per_episode
            == evaluate(learner, sampler.with_shuffle(), 20).per_episode).all()


def test_config_ranges() -> None:
    for bad in ({"processing_steps": 0}, {"scale": 0.0}, {"scale": -1.0}, {"hidden": 0}):
        with pytest.raises(KShotError, match="--"):
            MatchingConfig(**bad)


def _toy_dataset():
    from kshot.data.dataset import ClassDataset

    torch.manual_seed(3)
    centres = torch.randn(6, 4) * 3
    labels = torch.arange(6).repeat_interleave(8)
    items = centres[labels] + 0.3 * torch.randn(len(labels), 4)
    return ClassDataset.from_labels(items, labels, name="toy")


TRAINING_SECONDS = 60


def test_matching_fce_learns_unseen_omniglot_alphabets(shared_data, tmp_path, monkeypatch) -> None:
    """Background alphabets only, about a minute on one core; scored on 5-way 1-shot episodes of
    the 20 evaluation alphabets (never trained on)."""
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(tmp_path / "cache"))
    train = load_omniglot("lake", "train", 28, data_dir=shared_data, progress=False)
    test = load_omniglot("lake", "test", 28, data_dir=shared_data, progress=False)
    torch.manual_seed(0)
    learner = build_learner("matching", {"fce": True}, train.item_shape)
    untrained = evaluate(learner, EpisodeSampler(test, 5, 1, 15, seed=7), 100)
    config = TrainConfig(episodes=400, ways=20, shots=1, queries=5, val_episodes=0,
                         time_budget=TRAINING_SECONDS, seed=0)
    started = time.monotonic()
    Trainer(learner, config, tmp_path / "run", train, progress=False).fit()
    assert time.monotonic() - started < TRAINING_SECONDS + 30
    report = evaluate(learner, EpisodeSampler(test, 5, 1, 15, seed=123), 200)
    print(f"\nMatching Networks (FCE): {report.accuracy:.2%} ± {report.ci95:.2%} "
          f"(untrained {untrained.accuracy:.2%})")
    assert report.accuracy >= 0.85, f"{report.accuracy:.3f} ± {report.ci95:.3f}"
    assert report.accuracy > untrained.accuracy + 0.1
    assert not math.isnan(report.ci95)
