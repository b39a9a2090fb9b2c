"""kshot.evaluate: the 95% interval, evaluate() on tiny learners, and Lake's 20 runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.data.dataset import ClassDataset
from kshot.data.episodes import EpisodeSampler
from kshot.data.omniglot import LakeRuns, load_lake_runs
from kshot.evaluate import confidence95, evaluate, evaluate_lake_runs
from kshot.methods.base import Learner

# --- tiny learners -----------------------------------------------------------------------------


class AlwaysFirstClass(Learner):
    """Predicts class 0 for every query."""

    name = "always-first-class"

    def forward(self, support_x, support_y, query_x):
        n_way = int(support_y.max()) + 1
        logits = torch.zeros(*query_x.shape[:-3], n_way)  # [..., Q, N]
        logits[..., 0] = 1.0
        return logits


class PixelPrototypes(Learner):
    """Nearest class mean on raw pixels (no parameters); records the mode it was called in."""

    name = "pixel-prototypes"

    def __init__(self, item_shape):
        super().__init__(None, item_shape)
        self.modes: list[bool] = []

    def forward(self, support_x, support_y, query_x):
        self.modes.append(self.training)
        n_way = int(support_y.max()) + 1
        one_hot = F.one_hot(support_y, n_way).float()  # [..., N*K, N]
        prototypes = one_hot.transpose(-1, -2) @ support_x.flatten(-3)  # [..., N, D]
        prototypes = prototypes / one_hot.sum(-2).unsqueeze(-1)
        return -torch.cdist(query_x.flatten(-3), prototypes)  # [..., Q, N]


class LakeOracle(Learner):
    """Cheats on Lake's runs: answers the true labels, shifted by ``shift`` classes."""

    name = "lake-oracle"

    def __init__(self, runs: LakeRuns, shift: int = 0):
        super().__init__(None, runs.training.shape[-3:])
        self.labels = (runs.test_labels + shift) % 20

    def forward(self, support_x, support_y, query_x):
        assert support_x.shape[:2] == query_x.shape[:2] == (20, 20)
        assert torch.equal(support_y, torch.arange(20).expand(20, -1))
        return F.one_hot(self.labels, 20).float()  # [20 runs, 20 test items, 20 classes]


# --- confidence95 ------------------------------------------------------------------------------


def test_confidence95_hand_computed() -> None:
    # mean 0.75; population variance ((0.75)^2 + 3 * (0.25)^2) / 4 = 0.1875
    expected = 1.96 * math.sqrt(0.1875) / math.sqrt(4)
    assert confidence95(torch.tensor([0.0, 1.0, 1.0, 1.0])) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.424352447854375)


def test_confidence95_degenerate_cases() -> None:
    assert confidence95(torch.tensor([0.3])) == 0.0
    assert confidence95(torch.tensor([])) == 0.0
    assert confidence95(torch.full((10,), 0.6)) == pytest.approx(0.0, abs=1e-12)
    values = torch.tensor([0.2, 0.4, 0.9, 0.5, 0.5])
    expected = 1.96 * float(np.std(values.numpy())) / math.sqrt(5)
    assert confidence95(values) == pytest.approx(expected, rel=1e-6)


# --- evaluate ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_dataset() -> ClassDataset:
    """12 classes of 10 noisy copies of a random 6x6 template: pixel prototypes are right often,
    not always."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (12, 1, 1, 6, 6))
    noise = rng.integers(0, 256, (12, 10, 1, 6, 6))
    images = (0.25 * templates + 0.75 * noise).astype(np.uint8).reshape(120, 1, 6, 6)
    return ClassDataset.from_labels(images, np.repeat(np.arange(12), 10), name="noisy")


def test_evaluate_report_consistent_with_per_episode(noisy_dataset: ClassDataset) -> None:
    learner = PixelPrototypes((1, 6, 6))
    sampler = EpisodeSampler(noisy_dataset, 5, 2, 3, seed=11, start=4)
    report = evaluate(learner, sampler, episodes=30, batch_size=8)
    per_episode = report.per_episode
    assert per_episode.shape == (30,)
    assert (report.episodes, report.n_way, report.k_shot, report.n_query, report.seed) == \
        (30, 5, 2, 3, 11)
    assert report.accuracy == pytest.approx(float(per_episode.double().mean()), rel=1e-6)
    std = math.sqrt(sum((a - report.accuracy) ** 2 for a in per_episode.tolist()) / 30)
    assert report.ci95 == pytest.approx(1.96 * std / math.sqrt(30), rel=1e-5)
    assert report.ci95 == confidence95(per_episode)
    # accuracies are multiples of 1/15 (5 classes x 3 queries), and the task is neither trivial
    # nor hopeless for pixel prototypes
    assert torch.allclose(per_episode * 15, (per_episode * 15).round(), atol=1e-5)
    assert 0.3 < report.accuracy < 0.95 and report.ci95 > 0
    assert report.seconds > 0 and report.episodes_per_second > 0
    # the same numbers, episode by episode, from the sampler's episodes start .. start+29
    for i in range(30):
        episode = sampler.episode(4 + i)
        logits = learner(episode.support_x, episode.support_y, episode.query_x)
        expected = float((logits.argmax(-1) == episode.query_y).float().mean())
        assert per_episode[i].item() == pytest.approx(expected)


def test_evaluate_batch_size_does_not_change_results(noisy_dataset: ClassDataset) -> None:
    learner = PixelPrototypes((1, 6, 6))
    sampler = EpisodeSampler(noisy_dataset, 4, 1, 2, seed=3)
    one = evaluate(learner, sampler, episodes=20, batch_size=1)
    seven = evaluate(learner, sampler, episodes=20, batch_size=7)
    assert torch.equal(one.per_episode, seven.per_episode)
    assert one.accuracy == seven.accuracy and one.ci95 == seven.ci95


def test_evaluate_same_seed_same_episodes(noisy_dataset: ClassDataset) -> None:
    learner = PixelPrototypes((1, 6, 6))
    first = evaluate(learner, EpisodeSampler(noisy_dataset, 5, 1, 2, seed=21), episodes=25)
    second = evaluate(learner, EpisodeSampler(noisy_dataset, 5, 1, 2, seed=21), episodes=25)
    other = evaluate(learner, EpisodeSampler(noisy_dataset, 5, 1, 2, seed=22), episodes=25)
    assert torch.equal(first.per_episode, second.per_episode)
    assert not torch.equal(first.per_episode, other.per_episode)


def test_evaluate_runs_in_eval_mode_and_restores_mode(noisy_dataset: ClassDataset) -> None:
    learner = PixelPrototypes((1, 6, 6))
    learner.train()
    evaluate(learner, EpisodeSampler(noisy_dataset, 3, 1, 1), episodes=5, batch_size=2)
    assert learner.modes == [False] * 3 and learner.training
    learner.eval()
    evaluate(learner, EpisodeSampler(noisy_dataset, 3, 1, 1), episodes=2)
    assert not learner.training


def test_evaluate_always_first_class_scores_one_over_n_way(noisy_dataset: ClassDataset) -> None:
    sampler = EpisodeSampler(noisy_dataset, 4, 1, 3, seed=5)
    report = evaluate(AlwaysFirstClass(None, (1, 6, 6)), sampler, episodes=9, batch_size=4)
    assert report.per_episode.tolist() == [0.25] * 9
    assert report.accuracy == 0.25 and report.ci95 == 0.0


# --- Lake's runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake_data(shared_data: Path) -> Path:
    if not (shared_data / "omniglot" / "all_runs.zip").is_file():
        pytest.skip(f"all_runs.zip is not in {shared_data / 'omniglot'}")
    return shared_data


@pytest.fixture(scope="module")
def runs(lake_data: Path, tmp_path_factory: pytest.TempPathFactory) -> LakeRuns:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(tmp_path_factory.mktemp("lake-cache")))
        return load_lake_runs(28, lake_data, download=False, progress=False)


def test_each_lake_test_set_has_one_item_per_class(runs: LakeRuns) -> None:
    for run in range(20):
        assert sorted(runs.test_labels[run].tolist()) == list(range(20))


def test_lake_always_first_class_errs_95_percent(runs: LakeRuns) -> None:
    result = evaluate_lake_runs(AlwaysFirstClass(None, (1, 28, 28)), runs)
    assert result["per_run"] == [95.0] * 20
    assert result["error"] == 95.0
    assert result["seconds"] >= 0


def test_lake_oracle_errs_zero_and_shifted_oracle_always(runs: LakeRuns) -> None:
    result = evaluate_lake_runs(LakeOracle(runs), runs)
    assert result["per_run"] == [0.0] * 20 and result["error"] == 0.0
    wrong = evaluate_lake_runs(LakeOracle(runs, shift=1), runs)
    assert wrong["per_run"] == [100.0] * 20 and wrong["error"] == 100.0


def test_lake_pixel_prototypes_beat_chance(runs: LakeRuns) -> None:
    learner = PixelPrototypes((1, 28, 28))
    learner.train()
    result = evaluate_lake_runs(learner, runs)
    assert len(result["per_run"]) == 20
    assert result["error"] == pytest.approx(sum(result["per_run"]) / 20)
    # one test item is 5% of a run (computed in float32, hence approx)
    assert [p / 5 for p in result["per_run"]] == pytest.approx(
        [round(p / 5) for p in result["per_run"]], abs=1e-4)
    # chance is 95%; measured 79.25% at 28 px (Lake et al. 2015 report ~78% for pixel kNN)
    assert 70.0 < result["error"] < 90.0
    assert learner.training and learner.modes == [False]


def test_lake_runs_loaded_at_the_learner_size(runs: LakeRuns, lake_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(tmp_path))
    learner = PixelPrototypes((1, 28, 28))
    loaded = evaluate_lake_runs(learner, data_dir=str(lake_data))
    given = evaluate_lake_runs(learner, runs)
    assert loaded["per_run"] == given["per_run"]
