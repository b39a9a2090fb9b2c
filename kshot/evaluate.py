"""One evaluator for every learner: fixed episodes, mean accuracy with a 95% CI, Lake's 20 runs;
and the JSON record of a scored run that ``kshot eval`` and ``kshot compare`` print."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kshot.config import check_count
from kshot.data.episodes import EpisodeSampler
from kshot.data.omniglot import LakeRuns
from kshot.errors import KShotError
from kshot.methods.base import episode_accuracies


@dataclass
class Report:
    """Result of :func:`evaluate`: the mean of the learner's metric over the episodes (accuracy as a
    fraction, or a task's own metric such as MSE) and its 95% CI; ``per_episode`` keeps every
    episode's value for paired tests."""

    mean: float
    ci95: float
    per_episode: torch.Tensor = field(repr=False)
    episodes: int
    n_way: int
    k_shot: int
    n_query: int
    seed: int
    seconds: float
    metric: str = "accuracy"

    @property
    def accuracy(self) -> float:
        if self.metric != "accuracy":
            raise KShotError(f"this report measures {self.metric}, not accuracy; read .mean")
        return self.mean

    @property
    def episodes_per_second(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else float("inf")


def confidence95(values: torch.Tensor) -> float:
    """Half-width of the normal 95% interval of the mean: 1.96 · std / √n (population std)."""
    if len(values) < 2:
        return 0.0
    return float(1.96 * values.double().std(unbiased=False) / len(values) ** 0.5)


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
    ``sampler`` is an :class:`EpisodeSampler` or a task sampler (:mod:`kshot.tasks`); the score of
    an episode is the learner's ``episode_scores`` (accuracy, or its task's metric such as MSE).
    A learner that ``adapts_at_test`` (gradient steps on the support set) runs with autograd
    available; every other learner runs under ``torch.inference_mode``.
    ``fast`` (default: ``kshot.runtime.settings.compile``) scores with the frozen, fused copy of the
    backbone (:mod:`kshot.nn.fast`): the same logits within float tolerance, about 2.5× faster.
    """
    from tqdm.auto import tqdm

    from kshot.nn.fast import fast_inference

    check_count("episodes", episodes, "--episodes")
    check_count("batch_size", batch_size, "--batch-size")
    if getattr(learner, "order_sensitive", False):
        sampler = sampler.with_shuffle()  # the same episodes, items in a seeded random order
    was_training = learner.training
    learner.eval()
    scores = torch.empty(episodes)
    score = getattr(learner, "episode_scores", episode_accuracies)
    adapts = bool(getattr(learner, "adapts_at_test", False))
    start_time = time.perf_counter()
    with tqdm(total=episodes, desc="eval", unit="ep", disable=not progress, leave=False) as bar, \
            torch.inference_mode(not adapts), torch.no_grad(), fast_inference(learner, fast):
        for first in range(0, episodes, batch_size):
            indices = range(sampler.start + first, sampler.start + min(first + batch_size, episodes))
            batch = sampler.batch(list(indices)).to(device)
            outputs = learner(batch.support_x, batch.support_y, batch.query_x)
            scores[first : first + len(indices)] = score(outputs, batch.query_y).float().cpu()
            bar.update(len(indices))
    seconds = time.perf_counter() - start_time
    learner.train(was_training)
    return Report(float(scores.mean()), confidence95(scores), scores, episodes,
                  sampler.n_way, sampler.k_shot, sampler.n_query, sampler.seed, seconds,
                  getattr(learner, "metric", "accuracy"))


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
    with torch.inference_mode(not getattr(learner, "adapts_at_test", False)), torch.no_grad():
        logits = learner(support_x, support_y, query_x)  # [20 runs, 20 test items, 20 classes]
    wrong = (logits.argmax(-1).cpu() != runs.test_labels).double()
    per_run = (wrong.mean(-1) * 100).tolist()
    learner.train(was_training)
    return {"error": sum(per_run) / len(per_run), "per_run": per_run,
            "seconds": time.perf_counter() - start_time}


# ---------------------------------------------------------------- the records `kshot eval` prints
def checkpoint_fields(run_dir: str | Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The ``run`` / ``checkpoint`` / ``checkpoint_episodes`` keys of an eval record."""
    return {"run": str(run_dir), "checkpoint": checkpoint["checkpoint"],
            "checkpoint_episodes": checkpoint.get("episodes")}


#: The subsets a run can be scored on: its split's held-out test classes, or its validation classes
#: (which chose its checkpoint: a figure there is for tuning test-time options, not a test figure).
SCORED_SUBSETS = ("test", "val")


def check_scored_subset(subset: str, lake_runs: bool = False) -> None:
    """Refuse a ``subset`` that is not one of :data:`SCORED_SUBSETS`, and ``val`` with Lake's 20
    runs (a test set of their own), for ``kshot eval``, ``kshot compare`` and ``kshot santoro``."""
    if subset not in SCORED_SUBSETS:
        raise KShotError(f"--subset {subset!r}: choose one of {list(SCORED_SUBSETS)}")
    if lake_runs and subset != "test":
        raise KShotError("--lake-runs are a test set of their own: --subset val does not apply")


def test_set_fields(test_data, dataset: str, split: str | None) -> dict[str, Any]:
    """What a record says of the test set it was scored on (``kshot eval``, ``kshot santoro``);
    ``"subset": "val"`` marks a score on the validation classes."""
    subset = test_data.meta.get("subset", "test")
    return {"dataset": dataset, "split": split, **({"subset": subset} if subset != "test" else {}),
            "test_set": test_data.name,
            "test_classes": test_data.n_classes,
            "test_rotations": bool(test_data.meta.get("rotations", False))}


def eval_record(run_dir: str | Path, run_config: dict[str, Any], checkpoint: dict[str, Any],
                report, test_data, dataset: str, split: str | None,
                overlap: int, test_options: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``kshot eval --json`` record of a run scored on episodes (``report``: a
    :class:`Report`; accuracies and intervals in percent). ``kshot compare`` prints the same."""
    return {"method": run_config["method"], **test_set_fields(test_data, dataset, split),
            "ways": report.n_way, "shots": report.k_shot, "queries": report.n_query,
            "episodes": report.episodes, "seed": report.seed,
            "accuracy": round(report.accuracy * 100, 3), "ci95": round(report.ci95 * 100, 3),
            "overlap": overlap, **checkpoint_fields(run_dir, checkpoint),
            "seconds": round(report.seconds, 3),
            "episodes_per_s": round(report.episodes_per_second, 2),
            **({"test_options": test_options} if test_options else {})}


def lake_record(run_dir: str | Path, run_config: dict[str, Any], checkpoint: dict[str, Any],
                result: dict[str, Any], overlap: int) -> dict[str, Any]:
    """The ``kshot eval --lake-runs --json`` record (``result``: of :func:`evaluate_lake_runs`)."""
    return {"method": run_config["method"], "dataset": "omniglot", "split": "lake-runs",
            "ways": 20, "shots": 1, "episodes": 20, "error": round(result["error"], 3),
            "per_run": [round(e, 2) for e in result["per_run"]], "overlap": overlap,
            **checkpoint_fields(run_dir, checkpoint), "seconds": round(result["seconds"], 3)}


def resolve_test_set(data: dict[str, Any], dataset: str | None = None,
                     split: str | None = None) -> tuple[str, str | None]:
    """The data set and split a run is scored on, as ``kshot eval`` chooses them: ``dataset`` /
    ``split`` when given, else the run's own (its split only when the data set is its own), else
    the data set's default split."""
    from kshot.datasets import DEFAULT_SPLITS
    from kshot.tasks import FAMILIES

    if data["dataset"] in FAMILIES:
        command = getattr(FAMILIES[data["dataset"]], "command", data["dataset"])
        raise KShotError(f"this is a {data['dataset']} run (a task family, not classes): it cannot "
                         f"be scored on {dataset or 'class'} episodes; score it with `kshot "
                         f"{command}` on its own tasks")
    dataset = dataset or data["dataset"]
    split = split or (data["split"] if dataset == data["dataset"] else None) or \
        DEFAULT_SPLITS.get(dataset)
    return dataset, split


def load_test_data(data: dict[str, Any], image_size: int, dataset: str | None = None,
                   split: str | None = None, folder: str | Path | None = None,
                   test_rotations: bool | None = None, data_dir: str | Path | None = None,
                   progress: bool = False, subset: str = "test"):
    """The held-out test set of a run whose data config is ``data``, chosen by
    :func:`resolve_test_set` and loaded at ``image_size``: ``(dataset, split, test_data)``. Shared
    by ``kshot eval``, ``kshot santoro`` and :func:`kshot.compare.compare_runs`; the overlap guard
    is the caller's (one run or several). ``subset`` ``val`` loads the split's validation classes
    instead (to choose test-time options without looking at the test set)."""
    from kshot.datasets import load_dataset

    check_scored_subset(subset)
    dataset, split = resolve_test_set(data, dataset, split)
    test_data = load_dataset(dataset, split=split, subset=subset, image_size=image_size,
                             test_rotations=test_rotations, data_dir=data_dir, folder=folder,
                             progress=progress)
    test_data.meta["subset"] = subset
    return dataset, split, test_data
