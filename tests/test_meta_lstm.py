"""The LSTM meta-learner (kshot.methods.meta_lstm): the gate arithmetic, the preprocessing, batching,
the dropped second derivatives, and a short learning run on Omniglot."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from kshot.data.episodes import Episode, EpisodeSampler
from kshot.errors import KShotError
from kshot.evaluate import evaluate
from kshot.methods.base import METHODS
from kshot.methods.meta_lstm import (
    MetaLearnerCell,
    MetaLSTM,
    MetaLSTMConfig,
    lstm_cell,
    preprocess,
)
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 16, 16)


def _learner(**options) -> MetaLSTM:
    torch.manual_seed(0)
    return MetaLSTM(MetaLSTMConfig(**{"hidden": 4, **options}), SHAPE)


def _episodes(n_tasks: int = 2, queries: int = 2, n_way: int = 5, seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.rand(n_tasks, n_way, *SHAPE, generator=generator)
    query_x = torch.rand(n_tasks, n_way * queries, *SHAPE, generator=generator)
    support_y = torch.arange(n_way).repeat(n_tasks, 1)
    query_y = torch.arange(n_way).repeat_interleave(queries).repeat(n_tasks, 1)
    return Episode(support_x, support_y, query_x, query_y, n_way, 1)


def _set_gates(learner: MetaLSTM, input_rate: float, forget: float) -> None:
    """Zero gate weights: i_t = input_rate and f_t = sigmoid(forget) for every coordinate."""
    with torch.no_grad():
        for gate in (learner.cell.input_gate, learner.cell.forget_gate):
            gate.weight.zero_()
        learner.cell.input_gate.bias.fill_(math.log(input_rate / (1 - input_rate)))
        learner.cell.forget_gate.bias.fill_(forget)


# --- the cells --------------------------------------------------------------------------------


def test_gate_arithmetic_by_hand() -> None:
    cell = MetaLearnerCell(hidden_size=2)
    with torch.no_grad():  # i = σ(0.5 c - i_prev + 0.2), f = σ(h0 - 2 h1 + 0.7 f_prev + 1)
        cell.input_gate.weight.copy_(torch.tensor([[0.0, 0.0, 0.5, -1.0]]))
        cell.input_gate.bias.fill_(0.2)
        cell.forget_gate.weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 0.7]]))
        cell.forget_gate.bias.fill_(1.0)
    h = torch.tensor([[0.3, -1.0], [0.1, 0.5]])  # [H, N]: two coordinates
    c = torch.tensor([2.0, -4.0])
    gradient = torch.tensor([0.5, -3.0])
    i_prev, f_prev = torch.tensor([0.4, 0.0]), torch.tensor([1.0, 0.5])
    c_t, i, f = cell(h, c, gradient, i_prev, f_prev)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected_i = [sigmoid(0.5 * 2 - 0.4 + 0.2), sigmoid(0.5 * -4 - 0.0 + 0.2)]
    expected_f = [sigmoid(0.3 - 0.2 + 0.7 + 1), sigmoid(-1.0 - 1.0 + 0.35 + 1)]
    expected_c = [expected_f[0] * 2 - expected_i[0] * 0.5, expected_f[1] * -4 + expected_i[1] * 3]
    torch.testing.assert_close(i, torch.tensor(expected_i))
    torch.testing.assert_close(f, torch.tensor(expected_f))
    torch.testing.assert_close(c_t, torch.tensor(expected_c))
    torch.testing.assert_close(c_t, f * c + i * -gradient, rtol=0, atol=0)


def test_unit_forget_gate_and_constant_input_gate_is_sgd() -> None:
    """f = 1 and i = α: each update is one gradient step of rate α on the support loss."""
    learner, episodes, alpha = _learner(), _episodes(), 0.1
    _set_gates(learner, alpha, forget=100.0)  # σ(100) is 1 in float32
    c, i, f = learner.cell(torch.randn(20, 3), torch.tensor([1.0, -2.0, 0.5]),
                           torch.tensor([0.3, 0.0, -7.0]), torch.zeros(3), torch.zeros(3))
    assert torch.equal(f, torch.ones(3))
    torch.testing.assert_close(i, torch.full((3,), alpha))
    torch.testing.assert_close(c, torch.tensor([1.0 - alpha * 0.3, -2.0, 0.5 + alpha * 7.0]))

    adapted = learner.adapt(episodes.support_x, episodes.support_y, steps=2)
    for task in range(2):  # the reference: two SGD steps, one task at a time
        params = dict(learner.net.named_parameters())
        x, y = episodes.support_x[task], episodes.support_y[task]
        for _ in range(2):
            grads = grad(lambda p, x=x, y=y: F.cross_entropy(learner.model(p, x), y))(params)
            params = {name: value - alpha * grads[name] for name, value in params.items()}
        for name, value in params.items():
            torch.testing.assert_close(adapted[name][task], value, atol=1e-5, rtol=1e-5)


def test_lstm_cell_matches_torch_lstm_cell() -> None:
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(4, 6)
    x, h, c = torch.randn(9, 4), torch.randn(9, 6), torch.randn(9, 6)
    h_t, c_t = lstm_cell(cell, x.t(), h.t(), c.t())  # coordinates last
    expected_h, expected_c = cell(x, (h, c))
    torch.testing.assert_close(h_t.t(), expected_h)
    torch.testing.assert_close(c_t.t(), expected_c)


def test_preprocess_hand_values() -> None:
    p = 10.0
    x = torch.tensor([1.0, math.exp(5), -math.exp(-3), 0.0, 1e-5, -1e-6, math.exp(-p), -2.0])
    out = preprocess(x)
    expected = torch.tensor([
        [0.0, 1.0],  # log(1) = 0
        [0.5, 1.0],  # large: log(e^5) / 10
        [-0.3, -1.0],  # negative: the sign carries it
        [-1.0, 0.0],  # zero: below the threshold
        [-1.0, math.exp(p) * 1e-5],  # small: (-1, e^p x)
        [-1.0, -math.exp(p) * 1e-6],
        [-1.0, 1.0],  # at the threshold: the log branch, log(e^-p) / p = -1
        [math.log(2) / p, -1.0],
    ])
    torch.testing.assert_close(out, expected)
    assert preprocess(x, dim=0).shape == (2, len(x))
    torch.testing.assert_close(preprocess(x, dim=0), expected.t())


# --- the learner ------------------------------------------------------------------------------


def test_registered_with_paper_initialisation() -> None:
    assert METHODS["meta-lstm"] is MetaLSTM
    learner = MetaLSTM(MetaLSTMConfig(), (1, 28, 28))
    assert 4 <= learner.cell.forget_gate.bias.item() <= 6
    assert -5 <= learner.cell.input_gate.bias.item() <= -4
    assert learner.lstm.hidden_size == 20 and learner.lstm.input_size == 4
    assert learner.cell.input_gate.in_features == 22
    assert learner.net[0][0].out_channels == 32  # the paper's learner: 32 filters
    assert learner.flat_parameters().numel() == sum(p.numel() for p in learner.net.parameters())
    assert learner.adapts_at_test
    defaults = MetaLSTM.train_defaults(None, 1)
    assert defaults["ways"] == 5 and defaults["val_ways"] == 5 and defaults["val_shots"] == 1
    assert defaults["meta_batch"] == 1 and defaults["grad_clip"] == 0.25  # the paper's, at 1-shot
    five_shot = MetaLSTM.train_defaults(None, 5)
    assert five_shot["meta_batch"] == 4 and five_shot["grad_clip"] == 0.0
    assert MetaLSTM.config_defaults(TrainConfig(ways=20)) == {"n_way": 20}


def test_forward_shapes_and_batched_equals_looped() -> None:
    learner, episodes = _learner(), _episodes(n_tasks=2, queries=2)
    learner.eval()
    with torch.no_grad():  # as the evaluator runs it
        batched = learner(episodes.support_x, episodes.support_y, episodes.query_x)
        looped = [learner(episodes.support_x[t], episodes.support_y[t], episodes.query_x[t])
                  for t in range(2)]
    assert batched.shape == (2, 10, 5)
    assert looped[0].shape == (10, 5)
    torch.testing.assert_close(batched, torch.stack(looped), atol=1e-5, rtol=1e-5)
    learner.train()
    loss, metrics = learner.loss(episodes)
    assert set(metrics) == {"loss", "accuracy"} and loss.requires_grad
    torch.testing.assert_close(loss.item(), metrics["loss"])


def test_updates_change_predictions_and_follow_the_schedule(monkeypatch) -> None:
    learner, episodes = _learner(inner_steps=3, test_inner_steps=1), _episodes()
    calls = []
    original = learner.support_gradients
    monkeypatch.setattr(learner, "support_gradients", lambda *a: calls.append(1) or original(*a))
    learner(episodes.support_x, episodes.support_y, episodes.query_x)
    assert len(calls) == 3
    learner.eval()
    with torch.no_grad():
        adapted = learner(episodes.support_x, episodes.support_y, episodes.query_x)
    assert len(calls) == 4
    initial = learner.model.map(learner.model, learner.model.parameters(), episodes.query_x)
    assert not torch.allclose(adapted, initial)  # the update moved the learner


def test_test_time_options_can_be_set() -> None:
    # kshot eval / compare --set: the documented test-time fields, typed; training fields refused
    from dataclasses import asdict

    from kshot.checkpoint import typed_test_options

    config = asdict(MetaLSTMConfig())
    assert typed_test_options("meta-lstm", config, {"test_inner_steps": "10", "norm": "running"}
                              ) == {"test_inner_steps": 10, "norm": "running"}
    with pytest.raises(KShotError, match="test-time options: test_inner_steps, norm"):
        typed_test_options("meta-lstm", config, {"inner_steps": "10"})


def test_second_derivatives_are_dropped(monkeypatch) -> None:
    """The support loss and gradient enter the meta-learner as constants: the support items are not
    in the outer graph, and replaying the recorded gradients as plain tensors gives the same outer
    gradient; the outer loss still reaches every parameter through c_t."""
    learner, episodes = _learner(inner_steps=2), _episodes()
    support_x = episodes.support_x.clone().requires_grad_(True)
    logits = learner(support_x, episodes.support_y, episodes.query_x)
    loss = F.cross_entropy(logits.flatten(0, 1), episodes.query_y.flatten())
    params = list(learner.parameters())
    grads = torch.autograd.grad(loss, [support_x, *params], allow_unused=True)
    assert grads[0] is None  # no path from the support set but through detached inputs
    for (name, _), value in zip(learner.named_parameters(), grads[1:], strict=True):
        assert value is not None and torch.isfinite(value).all(), name
    by_tensor = {id(p): value for p, value in zip(params, grads[1:], strict=True)}
    for module in (learner.cell.input_gate, learner.cell.forget_gate, learner.lstm, learner.net):
        assert all(by_tensor[id(p)].abs().sum() > 0 for p in module.parameters())

    recorded = []
    original = learner.support_gradients
    monkeypatch.setattr(learner, "support_gradients",
                        lambda *a: recorded.append(original(*a)) or recorded[-1])
    learner(episodes.support_x, episodes.support_y, episodes.query_x)
    replay = iter([(g.clone(), l.clone()) for g, l in recorded])
    monkeypatch.setattr(learner, "support_gradients", lambda *a: next(replay))
    replayed = learner(episodes.support_x, episodes.support_y, episodes.query_x)
    replayed_loss = F.cross_entropy(replayed.flatten(0, 1), episodes.query_y.flatten())
    for value, expected in zip(torch.autograd.grad(replayed_loss, params), grads[1:], strict=True):
        torch.testing.assert_close(value, expected)


def test_state_dict_round_trip() -> None:
    learner, episodes = _learner(), _episodes()
    with torch.no_grad():
        learner.cell.input_gate.bias.fill_(-2.0)
    copy = MetaLSTM(MetaLSTMConfig(hidden=4), SHAPE)
    copy.load_state_dict(learner.state_dict())
    learner.eval()
    copy.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(episodes.support_x, episodes.support_y, episodes.query_x),
                                   learner(episodes.support_x, episodes.support_y, episodes.query_x))


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("inner_steps", -1), ("inner_steps", 0),
                                               ("test_inner_steps", -3), ("hidden_size", 0),
                                               ("hidden", -1), ("n_way", 0),
                                               ("inner_steps", math.nan)])
def test_bad_config_names_the_option(option, value) -> None:
    with pytest.raises(KShotError, match="--" + option.replace("_", "-")):
        MetaLSTMConfig(**{option: value})


def test_bad_norm_way_and_shape_raise() -> None:
    with pytest.raises(KShotError, match="--norm"):
        MetaLSTMConfig(norm="batch")
    learner, episodes = _learner(n_way=3), _episodes()
    with pytest.raises(KShotError, match="3 outputs"):
        learner(episodes.support_x, episodes.support_y, episodes.query_x)
    with pytest.raises(KShotError, match="square images"):
        MetaLSTM(MetaLSTMConfig(), (8,))
    with pytest.raises(KShotError, match="shape"):
        _learner()(torch.rand(5, 1, 20, 20), torch.arange(5), torch.rand(5, 1, 20, 20))


# --- learning on real data --------------------------------------------------------------------

TRAINING_EPISODES = 240
TRAINING_SECONDS = 40  # a cap: 240 episodes take about 20-30 s on one busy core


def test_meta_lstm_learns_omniglot(shared_data, tmp_path) -> None:
    """5-way 1-shot on Omniglot's (unrotated) training characters, scored on the test characters;
    a small learner (16 filters) so the run fits a test."""
    from kshot.datasets import load_dataset

    train = load_dataset("omniglot", split="vinyals", subset="train", image_size=28,
                         rotations=False, data_dir=shared_data, progress=False)
    test = load_dataset("omniglot", split="vinyals", subset="test", image_size=28,
                        data_dir=shared_data, progress=False)
    torch.manual_seed(0)
    learner = MetaLSTM(MetaLSTMConfig(hidden=16), train.item_shape)
    untrained = evaluate(learner, EpisodeSampler(test, 5, 1, 5, seed=1), episodes=100)
    config = TrainConfig(episodes=TRAINING_EPISODES, ways=5, shots=1, queries=5, meta_batch=4,
                         lr=3e-3, schedule="constant", val_episodes=0,
                         time_budget=TRAINING_SECONDS, seed=0)
    started = time.monotonic()
    Trainer(learner, config, tmp_path / "run", train, progress=False).fit()
    seconds = time.monotonic() - started
    assert seconds < TRAINING_SECONDS + 15
    report = evaluate(learner, EpisodeSampler(test, 5, 1, 5, seed=1), episodes=100)
    print(f"\nmeta-lstm after {seconds:.0f} s: {report.accuracy:.2%} ± {report.ci95:.2%} "
          f"(untrained {untrained.accuracy:.2%})")
    assert report.accuracy >= 0.50, f"{report.accuracy:.3f} ± {report.ci95:.3f}"  # measured 0.63
    assert report.accuracy >= untrained.accuracy + 0.15  # measured +0.30
