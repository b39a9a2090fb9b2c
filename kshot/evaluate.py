"""One evaluator for every learner: fixed episodes, mean accuracy with a 95% CI, Lake's 20 runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from kshot.data.episodes import EpisodeSampler
from kshot.data.omniglot import LakeRuns
from kshot.errors import KShotError
from kshot.methods.base import episode_accuracies


@dataclass
class Report:
    """Result of :func:`evaluate`; ``per_episode`` keeps every episode's accuracy for paired tests."""

    accuracy: float
    ci95: float
    per_episode: torch.Tensor = field(repr=False)
    episodes: int
    n_way: int
    k_shot: int
    n_query: int
    seed: int
    seconds: float

    @property
    def episodes_per_second(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else float("inf")


def confidence95(values: torch.Tensor) -> float:
    """Half-width of the normal 95% interval of the mean: 1.96 · std / √n (population std)."""
    if len(values) < 2:
        return 0.0
    return float(1.96 * values.double().std(unbiased=False) / len(values) ** 0.5)


@torch.inference_mode()
def evaluate(
    learner: torch.nn.Module,
    sampler: EpisodeSampler,
    episodes: int = 1000,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    fast: bool | None = None,
) -> Report:
    """Score ``learner`` on episodes ``sampler.start .. sampler.start + episodes - 1``.

    Episodes are scored ``batch_size`` at a time (stacked along a leading dimension, one backbone
    pass); batch norm uses its running statistics (eval mode), so batching changes no result.
    ``fast`` (default: ``kshot.runtime.settings.compile``) scores with the frozen, fused copy of the
    backbone (:mod:`kshot.nn.fast`): the same logits within float tolerance, about 2.5× faster.
    """
    from tqdm.auto import tqdm

    from kshot.nn.fast import fast_inference

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise KShotError(f"episodes must be an integer >= 1, got {episodes!r}; pass --episodes 1 "
                         "or more")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KShotError(f"batch_size must be an integer >= 1, got {batch_size!r}; pass "
                         "--batch-size 1 or more")
    if getattr(learner, "order_sensitive", False):
        sampler = sampler.with_shuffle()  # the same episodes, items in a seeded random order
    was_training = learner.training
    learner.eval()
    accuracies = torch.empty(episodes)
    start_time = time.perf_counter()
    with tqdm(total=episodes, desc="eval", unit="ep", disable=not progress, leave=False) as bar, \
            fast_inference(learner, fast):
        for first in range(0, episodes, batch_size):
            indices = range(sampler.start + first, sampler.start + min(first + batch_size, episodes))
            batch = sampler.batch(list(indices)).to(device)
            logits = learner(batch.support_x, batch.support_y, batch.query_x)
            accuracies[first : first + len(indices)] = episode_accuracies(logits, batch.query_y).cpu()
            bar.update(len(indices))
    seconds = time.perf_counter() - start_time
    learner.train(was_training)
    return Report(float(accuracies.mean()), confidence95(accuracies), accuracies, episodes,
                  sampler.n_way, sampler.k_shot, sampler.n_query, sampler.seed, seconds)


@torch.inference_mode()
def evaluate_lake_runs(
    learner: torch.nn.Module,
    runs: LakeRuns | None = None,
    image_size: int | None = None,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Lake's benchmark: 20 runs of 20-way one-shot classification within an alphabet.

    Each run has one training image per class and 20 test images; the error of a run is the share
    of its 20 test images given the wrong class. Returns ``{"error": mean % over runs,
    "per_run": [% per run], "seconds": ...}``.
    """
    from kshot.data.omniglot import load_lake_runs

    if runs is None:
        size = image_size or learner.item_shape[-1]
        runs = load_lake_runs(size, data_dir)
    was_training = learner.training
    learner.eval()
    start_time = time.perf_counter()
    support_x = runs.training.float().div(255).to(device)  # [20 runs, 20 classes, 1, S, S]
    query_x = runs.test.float().div(255).to(device)
    support_y = torch.arange(20, device=device).expand(len(support_x), -1)
    logits = learner(support_x, support_y, query_x)  # [20 runs, 20 test items, 20 classes]
    wrong = (logits.argmax(-1).cpu() != runs.test_labels).double()
    per_run = (wrong.mean(-1) * 100).tolist()
    learner.train(was_training)
    return {"error": sum(per_run) / len(per_run), "per_run": per_run,
            "seconds": time.perf_counter() - start_time}
