"""Meta Networks: layer augmentation, the attention read of the memory, the meta-learners m and d,
the meta information as constants, gradients to every parameter set, batched episodes, bad input,
``kshot eval`` of a run, and learning on Omniglot."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from test_cli import kshot as _kshot

from kshot.data.episodes import Episode, EpisodeSampler
from kshot.data.omniglot import load_omniglot
from kshot.errors import KShotError
from kshot.evaluate import evaluate
from kshot.methods import MetaNet, MetaNetConfig, build_learner
from kshot.methods import metanet as metanet_module
from kshot.methods.metanet import (
    AugmentedNet,
    ExampleWeightGenerator,
    TaskWeightGenerator,
    attention_read,
    augmented_layer,
    pair_loss,
    read_memory,
)
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = (1, 28, 28)


def _metanet(config: dict | None = None, seed: int = 0) -> MetaNet:
    torch.manual_seed(seed)
    return build_learner("metanet", {"hidden": 8, "meta_hidden": 6, **(config or {})}, IMAGE)


def _episodes(tasks: int, n_way: int = 5, shots: int = 1, queries: int = 2, seed: int = 0,
              shuffle: bool = True) -> Episode:
    """Random images with labels in a random order per episode (as the Trainer hands them)."""
    generator = torch.Generator().manual_seed(seed)
    support_y = torch.arange(n_way).repeat_interleave(shots).expand(tasks, -1).clone()
    if shuffle:
        support_y = torch.stack([row[torch.randperm(len(row), generator=generator)]
                                 for row in support_y])
    query_y = torch.arange(n_way).repeat_interleave(queries).expand(tasks, -1).clone()
    return Episode(torch.rand(tasks, n_way * shots, *IMAGE, generator=generator), support_y,
                   torch.rand(tasks, n_way * queries, *IMAGE, generator=generator), query_y,
                   n_way, shots)


# --- layer augmentation ------------------------------------------------------------------------


def test_layer_augmentation_sums_the_slow_and_fast_layers_after_their_nonlinearity() -> None:
    """relu(x Wᵀ) + relu(x W*ᵀ), by hand: x = (1, -2); W rows (1, 1), (-1, 0), (2, 1);
    W* rows (0, -1), (1, 1), (-3, 0)  ->  slow (-1, -1, 0), fast (2, -1, -3)."""
    x = torch.tensor([[1.0, -2.0]])
    slow = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [2.0, 1.0]])
    fast = torch.tensor([[0.0, -1.0], [1.0, 1.0], [-3.0, 0.0]])
    linear = metanet_module._linear
    augmented = augmented_layer(linear, x, slow, fast, nonlinear=True)
    torch.testing.assert_close(augmented, torch.tensor([[0.0 + 2.0, 0.0 + 0.0, 0.0 + 0.0]]))
    # not the layer of the summed weights: relu(x (W + W*)ᵀ) = relu((1, -2, -3)) = (1, 0, 0)
    assert not torch.allclose(augmented, F.relu(linear(x, slow + fast)))
    # the last layer has no non-linearity: the two outputs are summed, (-1, -1, 0) + (2, -1, -3)
    torch.testing.assert_close(augmented_layer(linear, x, slow, fast, nonlinear=False),
                               torch.tensor([[1.0, -2.0, -3.0]]))
    # no fast weights: the slow layer alone
    torch.testing.assert_close(augmented_layer(linear, x, slow, None, nonlinear=True),
                               torch.tensor([[0.0, 0.0, 0.0]]))


def test_augmented_network_layers() -> None:
    """A whole network: with every fast weight equal to its slow weight, each convolution block
    doubles (relu(a) + relu(a) = 2 relu(a), and max-pool commutes with a positive factor), so the
    four blocks and the ReLU linear layer give 2⁵ × the features, then the last layer 2× that."""
    torch.manual_seed(0)
    net = AugmentedNet(1, 28, 4, (6, 3))
    assert [tuple(w.shape) for w in net.weights] == [
        (4, 1, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3), (6, 4), (3, 6)]
    x = torch.rand(5, *IMAGE)
    slow = net(x)
    assert slow.shape == (5, 3)
    torch.testing.assert_close(net(x, fast=tuple(w.detach() for w in net.weights)), 64 * slow)
    zero = tuple(torch.zeros_like(w) for w in net.weights)
    torch.testing.assert_close(net(x, fast=zero), slow)


# --- the memory and its attention read ---------------------------------------------------------


def test_attention_reads_the_matching_example_and_mixes_convexly() -> None:
    keys = torch.eye(4)[None] * torch.tensor([1.0, 3.0, 0.5, 2.0])[:, None]  # [1, 4, 4]
    query = torch.tensor([[[0.0, 7.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])  # like key 1; between 0, 1
    paper = attention_read(query, keys, scale=1.0)
    # cosine similarities (0, 1, 0, 0): softmax = e / (e + 3) on the matching key, 1 / (e + 3) else
    e = math.e
    torch.testing.assert_close(paper[0, 0], torch.tensor([1, e, 1, 1]) / (e + 3))
    sharp = attention_read(query, keys, scale=10.0)
    assert sharp[0, 0, 1] > 0.999  # a query identical to a key reads mostly that example
    c = math.exp(1 / math.sqrt(2))
    torch.testing.assert_close(paper[0, 1], torch.tensor([c, c, 1, 1]) / (2 * c + 2))
    memory = torch.randn(1, 4, 3, 2)  # four examples' fast weights of shape [3, 2]
    for attention in (paper, sharp):
        assert (attention >= 0).all()
        torch.testing.assert_close(attention.sum(-1), torch.ones(1, 2))
        read = read_memory(attention, memory)
        assert read.shape == (1, 2, 3, 2)
        expected = torch.einsum("bqs,bsij->bqij", attention, memory)
        torch.testing.assert_close(read, expected)
        # a convex combination lies within the examples' range, coordinate by coordinate
        assert (read <= memory.max(1, keepdim=True).values + 1e-6).all()
        assert (read >= memory.min(1, keepdim=True).values - 1e-6).all()
    torch.testing.assert_close(read_memory(sharp, memory)[0, 0], memory[0, 1], atol=1e-2, rtol=0)


def test_pair_loss_is_the_cross_entropy_of_same_class() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    labels = torch.tensor([0, 0, 1])
    partners = torch.tensor([1, 2, 0])  # pairs (0, 1) same, (1, 2) different, (2, 0) different
    cosine = torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0])
    same = torch.tensor([1.0, 0.0, 0.0])
    probability = torch.sigmoid(3.0 * cosine)
    expected = -(same * probability.log() + (1 - same) * (1 - probability).log()).mean()
    torch.testing.assert_close(pair_loss(embeddings, labels, partners, 3.0), expected)


# --- the meta-learners -------------------------------------------------------------------------


def test_meta_learners_turn_gradients_into_fast_weights_of_the_right_shapes() -> None:
    learner = _metanet()
    batch = _episodes(3, shots=2)
    task = learner.task_fast_weights(batch.support_x, batch.support_y)
    memory = learner.example_fast_weights(batch.support_x, batch.support_y)
    assert [t.shape for t in task] == [(3, *w.shape) for w in learner.embedding.weights]
    assert [m.shape for m in memory] == [(3, 10, *w.shape) for w in learner.base.weights]
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in (*task, *memory))
    # each support item has its own fast weights; each episode its own task-level ones
    assert not torch.allclose(memory[-1][0, 0], memory[-1][0, 1])
    assert not torch.allclose(task[0][0], task[0][1])


def test_generators_are_odd_coordinatewise_functions_of_the_gradient() -> None:
    torch.manual_seed(1)
    m, d = ExampleWeightGenerator(5), TaskWeightGenerator(5)
    gradient = torch.randn(4, 3) * torch.logspace(-6, 0, 3)  # small and large coordinates
    sequence = torch.randn(3, 4, 3) * 1e-2
    torch.testing.assert_close(m(-gradient), -m(gradient))
    torch.testing.assert_close(d(-sequence), -d(sequence))
    assert m(gradient).shape == gradient.shape and d(sequence).shape == (4, 3)
    assert (m(torch.zeros(7)) == 0).all()
    # coordinate-wise: a coordinate's output depends only on that coordinate's gradient(s)
    changed = gradient.clone()
    changed[0, 0] = 0.5
    assert torch.equal(m(changed)[1:], m(gradient)[1:]) and m(changed)[0, 0] != m(gradient)[0, 0]
    changed = sequence.clone()
    changed[1, 2, 1] += 0.3
    difference = (d(changed) != d(sequence))
    assert difference[2, 1] and difference.sum() == 1


def test_chunked_meta_learners_and_queries_give_the_same_logits(monkeypatch) -> None:
    learner = _metanet()
    batch = _episodes(2, queries=3)
    expected = learner(batch.support_x, batch.support_y, batch.query_x)
    monkeypatch.setattr(metanet_module, "COORDINATE_CHUNK", 100)
    monkeypatch.setattr(metanet_module, "QUERY_CHUNK_ELEMENTS", 1)  # one query at a time
    torch.testing.assert_close(learner(batch.support_x, batch.support_y, batch.query_x), expected)


def test_meta_information_is_a_constant_of_the_outer_loss() -> None:
    """The gradients that m and d read are taken on detached slow weights: the fast weights depend
    on Z and G, not (by a derivative through the gradient) on W and Q."""
    learner = _metanet()
    batch = _episodes(2)
    memory = learner.example_fast_weights(batch.support_x, batch.support_y)
    task = learner.task_fast_weights(batch.support_x, batch.support_y)
    outputs = sum(t.sum() for t in (*memory, *task))
    slow = [*learner.base.weights, *learner.embedding.weights]
    meta = [*learner.example_generator.parameters(), *learner.task_generator.parameters()]
    grads = torch.autograd.grad(outputs, slow + meta, allow_unused=True)
    assert all(g is None for g in grads[: len(slow)])
    assert all(g is not None for g in grads[len(slow):])


# --- the whole learner -------------------------------------------------------------------------


def test_gradients_of_the_query_loss_reach_every_parameter_set() -> None:
    """Every weight of b, u, m (one per layer of b) and d (one per layer of u): 16 filters, as with
    8 a hidden unit of b can be inactive for every support item (zero gradient, so zero fast
    weights, and a fast layer through which no gradient passes for that episode)."""
    learner = _metanet({"hidden": 16, "meta_hidden": 8})
    batch = _episodes(2)
    loss, metrics = learner.loss(batch)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and math.isfinite(metrics["loss"])
    loss.backward()
    parts = {"slow weights of b (W)": learner.base, "slow weights of u (Q)": learner.embedding,
             "m (Z)": learner.example_generator, "d (G), its LSTM and read-out":
             learner.task_generator}
    for name, part in parts.items():
        for parameter_name, parameter in part.named_parameters():
            assert parameter.grad is not None, (name, parameter_name)
            assert torch.isfinite(parameter.grad).all(), (name, parameter_name)
            assert parameter.grad.abs().sum() > 0, (name, parameter_name)
    lstm = [p for generator in learner.task_generator for p in generator.lstm.parameters()]
    assert lstm and all(p.grad.abs().sum() > 0 for p in lstm)
    assert {n for n, _ in learner.named_parameters()} == {
        f"{prefix}.{n}" for prefix, part in (("base", learner.base), ("embedding",
        learner.embedding), ("example_generator", learner.example_generator),
        ("task_generator", learner.task_generator)) for n, _ in part.named_parameters()}


@pytest.mark.parametrize("training", [True, False])
def test_batched_episodes_equal_episodes_one_at_a_time(training: bool) -> None:
    learner = _metanet()
    learner.train(training)
    batch = _episodes(3, shots=2, queries=2, seed=4)
    batched = learner(batch.support_x, batch.support_y, batch.query_x)
    assert batched.shape == (3, 10, 5)
    for index, episode in enumerate(batch.unbatch()):
        single = learner(episode.support_x, episode.support_y, episode.query_x)
        torch.testing.assert_close(batched[index], single, rtol=1e-4, atol=1e-5)


def test_predicts_with_gradients_under_no_grad_and_keeps_no_graph() -> None:
    learner = _metanet()
    learner.eval()
    batch = _episodes(2)
    with torch.no_grad():
        logits = learner(batch.support_x, batch.support_y, batch.query_x)
    assert not logits.requires_grad and torch.isfinite(logits).all()
    assert learner.adapts_at_test and learner.order_sensitive
    report = evaluate(learner, EpisodeSampler(_toy_images(), 5, 1, 2, seed=3), 4, batch_size=3)
    assert 0.0 <= report.accuracy <= 1.0


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_one_line_errors() -> None:
    learner = _metanet()
    batch = _episodes(1, n_way=20)
    with pytest.raises(KShotError, match="base learner has 5 outputs.*got 20-way") as error:
        learner(batch.support_x, batch.support_y, batch.query_x)
    assert "\n" not in str(error.value)
    with pytest.raises(KShotError, match=r"items of shape \(1, 28, 28\), got \(1, 32, 32\)"):
        learner(torch.rand(5, 1, 32, 32), torch.arange(5), torch.rand(5, 1, 32, 32))
    with pytest.raises(KShotError, match="items of shape"):
        learner(torch.rand(5, *IMAGE), torch.arange(5), torch.rand(5, 1, 14, 14))
    with pytest.raises(KShotError, match="at least 2 support items"):
        build_learner("metanet", {"n_way": 1, "hidden": 4}, IMAGE)(
            torch.rand(1, *IMAGE), torch.zeros(1, dtype=torch.long), torch.rand(2, *IMAGE))
    with pytest.raises(KShotError, match="square images"):
        build_learner("metanet", {}, (784,))
    with pytest.raises(KShotError, match="at least 16 pixels, got 12"):
        build_learner("metanet", {}, (1, 12, 12))


@pytest.mark.parametrize("option, value, flag", [
    ("n_way", 0, "--n-way"), ("hidden", 0, "--hidden"), ("meta_hidden", 0, "--meta-hidden"),
    ("embedding_steps", 0, "--embedding-steps"), ("pair_scale", 0.0, "--pair-scale"),
    ("scale", -1.0, "--scale"), ("scale", float("nan"), "--scale"),
])
def test_config_validation_names_the_option(option, value, flag) -> None:
    with pytest.raises(KShotError, match=flag):
        MetaNetConfig(**{option: value})


def test_train_defaults_are_the_papers() -> None:
    defaults = MetaNet.train_defaults(None, 1)
    assert defaults["ways"] == 5 and defaults["meta_batch"] == 1 and defaults["lr"] == 1e-3
    assert defaults["grad_clip"] == 10.0 and defaults["schedule"] == "constant"
    TrainConfig(**defaults)  # every key is a TrainConfig field with a valid value
    assert MetaNet.train_defaults(20, 1)["val_ways"] == 20
    assert MetaNet.config_defaults(TrainConfig(ways=20)) == {"n_way": 20}


# --- the command line --------------------------------------------------------------------------




def test_kshot_train_and_eval_a_run(capsys, shared_data, tmp_path, monkeypatch) -> None:
    """``kshot train metanet`` on the vinyals split, then ``kshot eval --json`` (the learner runs
    with autograd inside the evaluator) and a 20-way request as a one-line error."""
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KSHOT_DATA_DIR", str(shared_data))
    threads = torch.get_num_threads()
    run = tmp_path / "run"
    try:
        code, _, err = _kshot(capsys, "train", "metanet", "--dataset", "omniglot", "--split",
                              "vinyals", "--image-size", 28, "--ways", 5, "--shots", 1,
                              "--queries", 2, "--episodes", 2, "--val-episodes", 0, "--hidden", 8,
                              "--out", run, "--quiet", "--threads", 1)
        assert code == 0, err
        config = json.loads((run / "config.json").read_text())
        assert config["method"] == "metanet"
        code, out, err = _kshot(capsys, "eval", run, "--json", "--episodes", 4, "--queries", 2,
                                "--threads", 1)
        assert code == 0, err
        record = json.loads(out)
        assert record["method"] == "metanet" and 0 <= record["accuracy"] <= 100
        code, out, err = _kshot(capsys, "eval", run, "--ways", 20, "--episodes", 2, "--threads", 1)
        assert code == 2 and "Traceback" not in err, err
        messages = [line for line in err.replace("\r", "\n").splitlines()
                    if line.startswith("kshot: error: ")]  # besides the progress bar
        assert len(messages) == 1 and "5 outputs" in messages[0], err
    finally:
        torch.set_num_threads(threads)


def _toy_images(n_classes: int = 8, per_class: int = 4):
    from kshot.data.dataset import ClassDataset

    generator = torch.Generator().manual_seed(0)
    prototypes = torch.rand(n_classes, *IMAGE, generator=generator)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    noisy = prototypes[labels] + 0.2 * torch.randn(len(labels), *IMAGE, generator=generator)
    return ClassDataset.from_labels((noisy.clamp(0, 1) * 255).to(torch.uint8), labels, name="toy")


# --- learning ----------------------------------------------------------------------------------

TRAINING_EPISODES = 60  # one episode per step: about 60 s on one shared core
TIME_CAP = 120  # seconds; only a guard against a very slow machine (fewer steps, a lower score)


def test_metanet_learns_unseen_omniglot_classes(shared_data, tmp_path, monkeypatch) -> None:
    """5-way 1-shot on the vinyals split (train classes only), the paper's model with the
    authors' optimiser (Adam 1e-3, clipping at 10, one episode per step), 60 episodes of 5
    queries per class (a fixed count, so the score does not depend on the machine's speed);
    scored on 5-way 1-shot episodes of the test classes (never trained on). Measured: 60 episodes
    (49 s) 59.4 % ± 2.9 over 80 test episodes; 106 episodes of 10 queries 68.3 % ± 2.3;
    untrained 18 %; chance 20 %."""
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(tmp_path / "cache"))
    train = load_omniglot("vinyals", "train", 28, data_dir=shared_data, progress=False)
    test = load_omniglot("vinyals", "test", 28, data_dir=shared_data, progress=False)
    torch.manual_seed(0)
    learner = build_learner("metanet", {"n_way": 5}, train.item_shape)
    untrained = evaluate(learner, EpisodeSampler(test, 5, 1, 5, seed=7), 30)
    config = TrainConfig(**{**MetaNet.train_defaults(5, 1), "episodes": TRAINING_EPISODES,
                            "queries": 5, "val_episodes": 0, "time_budget": TIME_CAP,
                            "checkpoint_every_s": 1e9, "log_every": 10**6, "seed": 0})
    started = time.monotonic()
    summary = Trainer(learner, config, tmp_path / "run", train, progress=False).fit()
    seconds = time.monotonic() - started
    report = evaluate(learner, EpisodeSampler(test, 5, 1, 5, seed=123), 80)
    print(f"\nMeta Networks after {summary['episodes']} episodes ({seconds:.0f} s): "
          f"{report.accuracy:.2%} ± {report.ci95:.2%} (untrained {untrained.accuracy:.2%})")
    assert report.accuracy >= THRESHOLD, f"{report.accuracy:.3f} ± {report.ci95:.3f}"
    assert report.accuracy > untrained.accuracy + 0.2


THRESHOLD = 0.45
