"""Task families (kshot.tasks): the sampler's determinism, the sinusoid family's parameter ranges and
values, its observation modes, bad input, and training on a family with an exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kshot.data.episodes import Episode, episode_seed
from kshot.errors import KShotError
from kshot.methods import build_learner
from kshot.tasks import FAMILIES, SinusoidTasks, TaskSampler
from kshot.tasks.sinusoid import SHIFT_NOISE, SHIFT_OFFSET, SHIFT_SCALE
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _generators(seed: int, indices) -> list[torch.Generator]:
    """The generators the sampler seeded ``seed`` gives tasks ``indices`` (its documented contract:
    task ``i`` is drawn from its own generator seeded by ``episode_seed(seed, i)``)."""
    return [torch.Generator().manual_seed(episode_seed(seed, i)) for i in indices]


def _assert_same_episode(a: Episode, b: Episode) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_way, a.k_shot) == (b.n_way, b.k_shot)


# --- determinism -------------------------------------------------------------------------------


def test_episode_shapes() -> None:
    batch = SinusoidTasks().sampler(7, 4, seed=0).batch([0, 1, 2])
    assert batch.batched and (batch.n_way, batch.k_shot, batch.n_query) == (1, 7, 4)
    assert batch.support_x.shape == (3, 7, 1) and batch.support_y.shape == (3, 7)
    assert batch.query_x.shape == (3, 4, 1) and batch.query_y.shape == (3, 4)
    assert batch.support_x.dtype == batch.support_y.dtype == torch.float32


def test_task_is_a_pure_function_of_seed_and_index() -> None:
    sampler = SinusoidTasks().sampler(5, 6, seed=11)
    forward, backward = sampler.batch([3, 5]), sampler.batch([5, 3])
    _assert_same_episode(forward.unbatch()[0], backward.unbatch()[1])
    _assert_same_episode(forward.unbatch()[1], backward.unbatch()[0])
    single = sampler.task(3)
    assert not single.batched
    _assert_same_episode(single, forward.unbatch()[0])
    # the same task from a new sampler with the same seed (another process would see it too)
    _assert_same_episode(SinusoidTasks().sampler(5, 6, seed=11).task(3), single)
    # a task does not depend on the batch it is drawn in, nor on the batch size
    big = sampler.batch(range(10)).unbatch()
    for index in (0, 3, 9):
        _assert_same_episode(big[index], sampler.batch([index]).unbatch()[0])
    _assert_same_episode(big[4], sampler.batch(range(4, 7)).unbatch()[0])
    # iteration walks the indices from ``start``; ``at`` moves the start without changing tasks
    stream = iter(sampler.at(4))
    for index in (4, 5, 6):
        _assert_same_episode(next(stream), big[index])
    assert sampler.start == 0


def test_other_seeds_and_indices_give_other_tasks() -> None:
    family = SinusoidTasks()
    a = family.sampler(5, 5, seed=0).batch(range(4))
    b = family.sampler(5, 5, seed=1).batch(range(4))
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert not torch.isclose(getattr(a, name), getattr(b, name)).any(), name
    # the tasks of one batch are distinct tasks, not one task repeated
    assert len({float(value) for value in a.support_x[:, 0, 0]}) == 4


def test_the_support_size_does_not_change_the_task() -> None:
    """The support and query points are drawn together (``k_shot + n_query`` points), so the task's
    curve is the same whatever the split: every point of any split lies on it."""
    family = SinusoidTasks()
    generators = _generators(2, [0])
    amplitude, phase = family.parameters(generators)
    for k_shot, n_query in ((1, 9), (5, 5), (9, 1)):
        episode = family.sampler(k_shot, n_query, seed=2).task(0)
        x, y = episode.items()
        torch.testing.assert_close(y, amplitude * torch.sin(x[:, 0] - phase))


# --- the sinusoid family -----------------------------------------------------------------------


def test_finn_family_ranges_and_values() -> None:
    family = SinusoidTasks("finn")
    indices = range(2000)
    batch = family.sampler(5, 5, seed=3).batch(indices)
    amplitude, phase = family.parameters(_generators(3, indices))
    assert amplitude.shape == phase.shape == (2000,)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    x, y = batch.items()
    assert -5.0 <= x.min() and x.max() <= 5.0
    # uniform draws: they fill their ranges (2000 tasks, 20000 points)
    assert amplitude.min() < 0.2 and amplitude.max() > 4.9
    assert phase.min() < 0.05 and phase.max() > math.pi - 0.05
    assert x.min() < -4.99 and x.max() > 4.99
    assert amplitude.mean() == pytest.approx(2.55, abs=0.1)
    assert phase.mean() == pytest.approx(math.pi / 2, abs=0.06)
    assert x.mean() == pytest.approx(0.0, abs=0.05)
    # every value is A sin(x - phi) of its own task, support values included (labels)
    expected = amplitude[:, None] * torch.sin(x[..., 0] - phase[:, None])
    torch.testing.assert_close(y, expected)
    assert y.abs().max() <= 5.0
    # curve() is the same function of the task's generator
    points = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(family.curve(_generators(3, [7])[0], points),
                               amplitude[7] * torch.sin(points - phase[7]))


def test_book_family_phase_is_zero_or_pi() -> None:
    family = SinusoidTasks("book")
    indices = range(1000)
    amplitude, phase = family.parameters(_generators(0, indices))
    assert set(phase.tolist()) == {0.0, float(torch.tensor(math.pi))}  # pi in float32
    assert (phase == 0).float().mean() == pytest.approx(0.5, abs=0.06)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    x, y = family.sampler(4, 4, seed=0).batch(indices).items()
    torch.testing.assert_close(y, amplitude[:, None] * torch.sin(x[..., 0] - phase[:, None]))
    # the same draws as finn's, only the phase differs: amplitudes and points agree
    finn_amplitude, _ = SinusoidTasks("finn").parameters(_generators(0, indices))
    torch.testing.assert_close(amplitude, finn_amplitude)
    finn_x, _ = SinusoidTasks("finn").sampler(4, 4, seed=0).batch(indices).items()
    assert torch.equal(x, finn_x)


def test_observation_modes() -> None:
    indices = range(400)
    episodes = {mode: SinusoidTasks(observation=mode).sampler(10, 5, seed=5).batch(indices)
                for mode in ("labels", "none", "shifted")}
    labels = episodes["labels"]
    amplitude, phase = SinusoidTasks().parameters(_generators(5, indices))
    true_support = amplitude[:, None] * torch.sin(labels.support_x[..., 0] - phase[:, None])
    true_query = amplitude[:, None] * torch.sin(labels.query_x[..., 0] - phase[:, None])
    torch.testing.assert_close(labels.support_y, true_support)
    for mode, episode in episodes.items():
        # the same task and points whatever is observed; the queries always carry the true values
        assert torch.equal(episode.support_x, labels.support_x), mode
        assert torch.equal(episode.query_x, labels.query_x), mode
        torch.testing.assert_close(episode.query_y, true_query)
    assert torch.equal(episodes["none"].support_y, torch.zeros_like(true_support))
    shifted = episodes["shifted"].support_y
    residual = shifted - (SHIFT_OFFSET + SHIFT_SCALE * true_support)
    assert (SHIFT_OFFSET, SHIFT_SCALE, SHIFT_NOISE) == (1.0, -0.6, 0.05)  # the documented map
    # 4000 points of N(0, 0.05^2) noise: mean within ~9 standard errors, spread within 5 %
    assert abs(float(residual.mean())) < 0.007
    assert float(residual.std()) == pytest.approx(0.05, rel=0.05)
    assert float(residual.abs().max()) < 0.05 * 6
    # the observation is a noisy affine map of the value, not the value itself
    assert float((shifted - true_support).abs().mean()) > 0.5


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k_shot", [0, -1])
def test_bad_shot_raises(k_shot: int) -> None:
    with pytest.raises(KShotError, match="--shots"):
        SinusoidTasks().sampler(k_shot, 5)
    with pytest.raises(KShotError, match="--shots"):
        TaskSampler(SinusoidTasks(), k_shot, 5)


def test_bad_query_count_raises() -> None:
    with pytest.raises(KShotError, match="--queries"):
        SinusoidTasks().sampler(5, 0)
    with pytest.raises(KShotError, match="--shots"):
        SinusoidTasks().sampler(2.5, 5)


def test_unknown_family_or_observation_raises() -> None:
    with pytest.raises(KShotError, match="sinusoid family must be one of finn, book, got 'wave'"):
        SinusoidTasks("wave")
    with pytest.raises(KShotError, match="observation must be one of labels, shifted, none"):
        SinusoidTasks(observation="values")
    assert FAMILIES["sinusoid"] is SinusoidTasks


# --- training on a family ----------------------------------------------------------------------


def _family_trainer(run_dir: Path, episodes: int, init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)
    learner = build_learner("maml", {"mlp": (8, 8), "first_order_episodes": 6}, (1,))
    config = TrainConfig(episodes=episodes, ways=1, shots=5, queries=5, meta_batch=2, lr=1e-2,
                         schedule="step", decay_every=6, lr_decay=0.5, val_every=4,
                         val_episodes=6, val_ways=1, val_shots=5, val_queries=5, log_every=2,
                         checkpoint_every_s=1e9, seed=4)
    return Trainer(learner, config, run_dir, SinusoidTasks(), SinusoidTasks(), progress=False)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in trainer.learner.state_dict().items()}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_trains_on_a_task_family_and_resumes_exactly(tmp_path: Path) -> None:
    """8 steps of 2 tasks straight, against 4 steps then a new Trainer (other initial weights)
    resumed for the other 4: bit-identical weights, the same logged losses. The run crosses the
    first-order warm-up (6 episodes), a learning-rate decay and validations."""
    straight = _family_trainer(tmp_path / "straight", episodes=16)
    assert isinstance(straight.train_sampler, TaskSampler)
    assert straight.val_sampler is not None and straight.val_sampler.seed != 4
    initial = _weights(straight)
    summary = straight.fit()
    assert summary["finished"] and summary["step"] == 8 and summary["metric"] == "mse"
    final = _weights(straight)
    assert any(not torch.equal(initial[name], final[name]) for name in final)

    records = _records(tmp_path / "straight")
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4, 6, 8]
    assert all("mse" in r and "accuracy" not in r and r["mse"] >= 0 for r in val)
    train = [r for r in records if r["kind"] == "train"]
    assert all(math.isfinite(r["loss"]) and r["mse"] == r["loss"] for r in train)
    # MSE is lower-is-better: the best checkpoint holds the smallest validation MSE
    best = json.loads((tmp_path / "straight" / "best.json").read_text())
    assert best["val_mse"] == pytest.approx(min(r["mse"] for r in val))
    last = json.loads((tmp_path / "straight" / "last.json").read_text())
    assert last["best_value"] == pytest.approx(best["val_mse"]) and last["best_accuracy"] == -1

    run = tmp_path / "resumed"
    assert _family_trainer(run, episodes=8).fit()["step"] == 4
    resumed = _family_trainer(run, episodes=16, init_seed=99)
    assert resumed.fit(resume=True)["step"] == 8
    for name, tensor in final.items():
        assert torch.equal(resumed.learner.state_dict()[name], tensor), name
    resumed_records = _records(run)
    assert [(r["kind"], r["step"]) for r in resumed_records] == \
        [(r["kind"], r["step"]) for r in records]
    assert [r.get("loss", r.get("mse")) for r in resumed_records] == \
        [r.get("loss", r.get("mse")) for r in records]
