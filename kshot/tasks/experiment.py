"""Runs on a task family: train (or resume, or reuse) a run, and score it on fresh tasks after
0, 1, 5, 10 … adaptation steps. ``kshot sinusoid`` and ``kshot ntm copy`` are built from these.

A run on a task family is an ordinary run directory (``config.json``, checkpoints, metrics,
``classes.json`` with no classes): the one Trainer trains it, ``load_run`` loads it, the one
evaluator scores it with the family's metric. Its ``data`` record names the family and its options
instead of a class dataset; ``kshot eval`` refuses to score it on class episodes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kshot.checkpoint import load_run, read_run_config, write_run_config
from kshot.errors import KShotError
from kshot.evaluate import Report, evaluate
from kshot.methods.base import build_learner, config_from_dict, config_to_dict, get_method
from kshot.tasks.base import TaskFamily
from kshot.tasks.copy import CopyTask
from kshot.tasks.sinusoid import SinusoidTasks
from kshot.train import TrainConfig, Trainer


def family_from_record(data: dict[str, Any]) -> TaskFamily | CopyTask:
    """The task family a run's ``data`` record names."""
    if data.get("dataset") == "sinusoid":
        return SinusoidTasks(data["family"], data.get("observation", "labels"))
    if data.get("dataset") == "copy":
        return CopyTask(data["width"], data["min_length"], data["max_length"])
    raise KShotError(f"not a task-family run (data set {data.get('dataset')!r})")


def family_record(family: TaskFamily | CopyTask) -> dict[str, Any]:
    if isinstance(family, SinusoidTasks):
        return {"dataset": "sinusoid", "family": family.variant, "observation": family.observation,
                "item_shape": list(family.item_shape)}
    if isinstance(family, CopyTask):
        return {"dataset": "copy", "width": family.width, "min_length": family.min_length,
                "max_length": family.max_length, "item_shape": list(family.item_shape)}
    raise KShotError(f"no run record for task family {family.name!r}")


def is_finished(run_dir: Path) -> bool:
    path = run_dir / "last.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("finished"))


def train_task_run(run_dir: str | Path, method: str, family: TaskFamily | CopyTask, train_config: TrainConfig,
                   method_config: dict[str, Any] | None = None, progress: bool = False,
                   device: str = "cpu") -> dict[str, Any]:
    """Train ``method`` on ``family`` into ``run_dir``; resume it if it was interrupted, leave it
    as it is if it is finished. A run directory holding another method, family or configuration
    is refused (choose another directory); only the time budget may differ (a resumed run keeps
    the one it was started with). Returns the run's ``last.json`` metadata."""
    run_dir = Path(run_dir)
    record = family_record(family)
    cls = get_method(method)
    config = config_from_dict(cls.Config, method_config or {})
    wanted = {"method": method, "method_config": config_to_dict(config),
              "train_config": asdict(train_config), "data": record}
    if (run_dir / "config.json").is_file():
        stored = read_run_config(run_dir)
        # fields added to either config since the run was stored take their defaults
        stored_train = config_from_dict(TrainConfig, stored["train_config"])
        stored["train_config"] = asdict(stored_train)
        if stored.get("method") == method:
            stored["method_config"] = config_to_dict(
                config_from_dict(cls.Config, stored.get("method_config") or {}))
        for key in ("method", "method_config", "train_config", "data"):
            if _comparable(stored.get(key)) != _comparable(wanted[key]):
                raise KShotError(f"{run_dir} holds a run with another {key.replace('_', ' ')}; "
                                 "choose another --out directory (or delete it to retrain)")
        if is_finished(run_dir):
            return json.loads((run_dir / "last.json").read_text())
        train_config = stored_train
    torch.manual_seed(train_config.seed)
    learner = build_learner(method, config, family.item_shape)
    trainer = Trainer(learner, train_config, run_dir, family, family, device=device,
                      progress=progress)
    resume = (run_dir / "config.json").is_file()
    if not resume:
        write_run_config(run_dir, wanted)
    return trainer.fit(resume=resume)


def _comparable(record: Any) -> Any:
    """A config record as JSON sees it, without the time budget (which a rerun may change)."""
    record = json.loads(json.dumps(record))
    if isinstance(record, dict):
        record.pop("time_budget", None)
    return record


@dataclass
class StepScore:
    """The family's metric after ``steps`` adaptation steps (0: the initialisation as it is)."""

    steps: int
    report: Report


def score_after_steps(run_dir: str | Path, family: TaskFamily, k_shot: int, n_query: int,
                      tasks: int, seed: int, steps: list[int],
                      batch_size: int = 100) -> list[StepScore]:
    """Score the run's model on tasks ``0 .. tasks - 1`` of ``family`` drawn with ``seed`` (the
    same tasks for every step count and every run), after each number of ``steps``."""
    learner, _, _ = load_run(run_dir)
    if not getattr(learner, "adapts_at_test", False):
        raise KShotError(f"{run_dir} holds a model that does not adapt at test")
    sampler = family.sampler(k_shot, n_query, seed)
    scores = []
    for count in steps:
        learner.test_steps = count
        scores.append(StepScore(count, evaluate(learner, sampler, tasks, batch_size=batch_size)))
    return scores


def predictions_after_steps(run_dir: str | Path, support: tuple[torch.Tensor, torch.Tensor],
                            grid: torch.Tensor, steps: list[int]) -> dict[int, torch.Tensor]:
    """The run's predictions on ``grid [G, d]`` after adapting on one task's ``support`` (``x
    [K, d]``, ``y [K]``) for each number of ``steps`` (for the book's plot)."""
    learner, _, _ = load_run(run_dir)
    predictions = {}
    with torch.no_grad():
        for count in steps:
            learner.test_steps = count
            predictions[count] = learner(support[0], support[1], grid).detach()
    return predictions


@dataclass
class LengthScore:
    """Bits per sequence of a copy run on sequences of ``length`` (``None``: its training range)."""

    length: int | None
    report: Report


def score_copy_run(run_dir: str | Path, lengths: list[int | None], sequences: int, seed: int,
                   batch_size: int = 10) -> list[LengthScore]:
    """Score a copy-task run on ``sequences`` fresh sequences (``0 .. sequences - 1`` of a task
    seeded ``seed``) of each length: ``None`` is the run's training range (one length per batch of
    ``batch_size``), an integer a fixed length (the paper's generalisation test)."""
    learner, run_config, _ = load_run(run_dir)
    task = family_from_record(run_config["data"])
    if not isinstance(task, CopyTask):
        raise KShotError(f"{run_dir} is a {run_config['data'].get('dataset')} run, not a copy-task "
                         "run")
    scores = []
    for length in lengths:
        sampler = task.sampler(seed=seed) if length is None else CopyTask.fixed(length, task.width,
                                                                                 seed)
        scores.append(LengthScore(length, evaluate(learner, sampler, sequences,
                                                   batch_size=batch_size)))
    return scores


def copy_trace(run_dir: str | Path, length: int, seed: int) -> dict[str, torch.Tensor]:
    """What the book's copy-task picture shows for sequence 0 of ``length`` (seeded ``seed``):
    ``target [T, bits]``, ``output [T, bits]`` (probabilities of the output phase), and for an NTM
    the read and write weightings of the first heads over all ``2T + 1`` steps ``[2T+1, N]``."""
    learner, run_config, _ = load_run(run_dir)
    task = family_from_record(run_config["data"])
    batch = CopyTask.fixed(length, task.width, seed).batch([0])
    learner.eval()
    with torch.no_grad():
        logits, trace = learner.sequence(batch.inputs)
    picture = {"target": batch.targets[0], "output": torch.sigmoid(batch.output_phase(logits))[0]}
    if trace is not None:
        picture.update(read=trace.read[0], write=trace.write[0])
    return picture
