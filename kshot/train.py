"""One episodic Trainer for every learner.

Meta-batches of episodes, Adam with a step or cosine schedule, periodic validation on fixed
episodes, the best checkpoint kept (only when there are validation classes the run does not train
on; otherwise the last checkpoint is the run's result), a progress bar, a JSONL metrics file, the
classes the run saw (``classes.json``, :mod:`kshot.protocol`), and resume: the state is
checkpointed every ``checkpoint_every_s`` seconds, at every validation, and when the process gets
SIGINT/SIGTERM; because episode ``i`` is a pure function of ``(seed, i)``, a resumed run sees exactly
the episodes the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kshot.checkpoint import learner_state, load_checkpoint, load_learner_state, save_checkpoint
from kshot.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    check_choice,
    check_ranges,
)
from kshot.data.dataset import ClassDataset
from kshot.data.episodes import Episode, EpisodeSampler, episode_seed
from kshot.data.store import atomic_write_bytes
from kshot.errors import KShotError
from kshot.evaluate import evaluate
from kshot.methods.base import Learner
from kshot.nn.fast import compile_backbone, uncompile_backbone
from kshot.protocol import CLASSES_FILE, class_ids, inherited_classes, write_seen


@dataclass
class TrainConfig:
    episodes: int = 20000
    """Training episodes in all (optimiser steps × meta_batch)."""
    ways: int = 60
    """Classes per training episode (Snell et al.: 60)."""
    shots: int = 1
    """Support images per class in training episodes."""
    queries: int = 5
    """Query images per class in training episodes."""
    meta_batch: int = 1
    """Episodes per optimiser step."""
    task_chunk: int = 0
    """Episodes per forward and backward pass (0: the whole meta-batch in one): each meta-batch
    is split into chunks of this many episodes whose gradients are summed, each chunk's loss
    weighted by its share of the episodes, before the one optimiser step, so peak memory is that of
    a chunk. The same gradient for a loss that is the mean over the batch's episodes (MAML, the
    LSTM meta-learner, every loss that averages equal episodes), up to rounding; running
    batch-norm averages are updated once per chunk."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    schedule: str = "step"
    """step (multiply by lr_decay every decay_every episodes), cosine, or constant."""
    decay_every: int = 2000
    """Episodes between learning-rate decays of the step schedule (Snell et al.: 2000)."""
    lr_decay: float = 0.5
    """Factor of each step decay."""
    val_every: int = 500
    """Episodes between validations."""
    val_episodes: int = 200
    """Fixed validation episodes per validation."""
    val_ways: int = 5
    """Way of the validation episodes."""
    val_shots: int = 1
    """Shot of the validation episodes."""
    val_queries: int = 15
    """Queries per class of the validation episodes."""
    time_budget: float = 0.0
    """Stop after this many seconds of training in all, resumes included (0: no limit)."""
    checkpoint_every_s: float = 60.0
    """Seconds between resume checkpoints."""
    log_every: int = 100
    """Episodes between lines of the metrics file."""
    seed: int = 0
    """Seed of the training episodes and of the weight initialisation."""
    precision: str = "fp32"
    """fp32, or bf16: mixed precision (convolutions and matrix products in bfloat16 under
    torch.autocast, weights, optimiser and losses in float32); about 1.7× faster Conv4 training
    on CPUs with AMX or AVX-512 BF16, slower on CPUs without them."""
    grad_clip: float = 0.0
    """Rescale the gradient of each step so that its global norm is at most this (0: no clipping;
    sequence models with memory, such as the NTM, train with it, as Graves et al. do)."""
    augment: str = "none"
    """Batch augmentation of training episodes: none, or affine (Koch et al.'s random rotation,
    shear, scale and translation, drawn per image, applied to the whole batch at once)."""
    aug_rotation: float = 10.0
    """affine: largest rotation, degrees (Koch et al.: 10)."""
    aug_shear: float = 0.3
    """affine: largest shear (Koch et al.: 0.3)."""
    aug_scale: float = 0.2
    """affine: scale drawn from [1 - this, 1 + this] per axis (Koch et al.: 0.2)."""
    aug_translate: float = 2.0
    """affine: largest translation, pixels (Koch et al.: 2 on 105-pixel images)."""
    aug_probability: float = 0.5
    """affine: probability that each component (rotation, x and y shear, x and y scale, x and y
    translation) is drawn rather than left neutral, independently (Koch et al.: 0.5)."""

    def __post_init__(self) -> None:
        check_ranges(self, episodes=NON_NEGATIVE, ways=AT_LEAST_ONE, shots=AT_LEAST_ONE,
                     queries=NON_NEGATIVE, meta_batch=AT_LEAST_ONE, task_chunk=NON_NEGATIVE,
                     lr=POSITIVE, weight_decay=NON_NEGATIVE, grad_clip=NON_NEGATIVE, decay_every=AT_LEAST_ONE,
                     lr_decay=Range(0, 1, low_open=True), val_every=AT_LEAST_ONE,
                     val_episodes=NON_NEGATIVE, val_ways=AT_LEAST_ONE, val_shots=AT_LEAST_ONE,
                     val_queries=AT_LEAST_ONE, time_budget=NON_NEGATIVE,
                     checkpoint_every_s=POSITIVE, log_every=AT_LEAST_ONE, seed=NON_NEGATIVE,
                     aug_rotation=Range(0, 180), aug_shear=NON_NEGATIVE,
                     aug_scale=FRACTION, aug_translate=NON_NEGATIVE,
                     aug_probability=PROBABILITY)
        check_choice(self, "schedule", SCHEDULES)
        check_choice(self, "augment", AUGMENTATIONS)
        check_choice(self, "precision", PRECISIONS)


SCHEDULES = ("step", "cosine", "constant")
AUGMENTATIONS = ("none", "affine")
PRECISIONS = ("fp32", "bf16")
AUGMENT_SEED_OFFSET = 7_000_003  # the augmentation of step i is a pure function of (seed, i)


def augment_episode(batch: Episode, config: TrainConfig, step: int) -> Episode:
    """The training batch of ``step`` with its images distorted as ``config.augment`` says.

    Support and query images of every episode in the batch are distorted in one
    ``affine_grid``/``grid_sample`` call, each image by its own draw; the draws are seeded by
    ``(seed, step)``, so a resumed run distorts exactly as the uninterrupted one.
    """
    if config.augment == "none":
        return batch
    from kshot.nn.augment import random_affine

    generator = torch.Generator().manual_seed(episode_seed(config.seed + AUGMENT_SEED_OFFSET, step))
    support = batch.support_x.flatten(0, -4)  # [items, C, H, W] of every episode of the batch
    images = torch.cat([support, batch.query_x.flatten(0, -4)])
    distorted = random_affine(images, generator, rotation=config.aug_rotation,
                              shear=config.aug_shear,
                              scale=(1 - config.aug_scale, 1 + config.aug_scale),
                              translate=config.aug_translate, probability=config.aug_probability)
    return replace(batch, support_x=distorted[: len(support)].view_as(batch.support_x),
                   query_x=distorted[len(support) :].view_as(batch.query_x))


def _adam(parameters: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, in its fused (one kernel for all parameters) form where this torch has it for the
    parameters' device: the same update, a few milliseconds less per step than the per-tensor loop."""
    try:
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def make_sampler(data, ways: int, shots: int, queries: int, seed: int, shuffle: bool):
    """Episodes of a class dataset (:class:`EpisodeSampler`), or tasks of a task family
    (:mod:`kshot.tasks`: it has ``sampler(k_shot, n_query, seed)``; the way is the family's own)."""
    if hasattr(data, "sampler"):
        return data.sampler(shots, queries, seed)
    return EpisodeSampler(data, ways, shots, queries, seed=seed, shuffle=shuffle)


VAL_SEED_OFFSET = 1_000_003  # validation episodes use seed + this: fixed, disjoint from training


class Trainer:
    """Trains ``learner`` on episodes of ``train_data``, validating on ``val_data``, into ``run_dir``."""

    def __init__(self, learner: Learner, config: TrainConfig, run_dir: str | Path,
                 train_data: ClassDataset, val_data: ClassDataset | None = None,
                 device: str | torch.device = "cpu", progress: bool = True,
                 compile: bool | None = None) -> None:
        self.learner = learner.to(device)
        self.compile = compile  # None: kshot.runtime.settings.compile
        self._compiled = False
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.progress = progress
        shuffle = learner.order_sensitive  # a sequence reader must not learn labels from positions
        self.train_sampler = make_sampler(train_data, config.ways, config.shots, config.queries,
                                          config.seed, shuffle)
        self.val_sampler = None
        if val_data is not None and config.val_episodes > 0:
            self.val_sampler = make_sampler(val_data, config.val_ways, config.val_shots,
                                            config.val_queries, config.seed + VAL_SEED_OFFSET,
                                            shuffle)
        self.optimizer = None
        if learner.trainable:
            self.optimizer = _adam([p for p in learner.parameters() if p.requires_grad],
                                   config.lr, config.weight_decay)
        self.step = 0
        self.best: float | None = None  # best validation value of the learner's metric
        self.elapsed = 0.0
        self._stop_signal: int | None = None

    # ----------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return math.ceil(self.config.episodes / self.config.meta_batch)

    def learning_rate(self, step: int) -> float:
        config, episodes = self.config, step * self.config.meta_batch
        if config.schedule == "constant":
            return config.lr
        if config.schedule == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * min(episodes / config.episodes, 1.0)))
        if config.schedule == "step":
            return config.lr * config.lr_decay ** (episodes // max(config.decay_every, 1))
        raise KShotError(f"unknown schedule {config.schedule!r}; use {', '.join(SCHEDULES)}")

    # ----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        tensors = learner_state(self.learner)
        if self.optimizer is not None:
            for index, state in self.optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        return tensors

    @property
    def best_accuracy(self) -> float:
        """The best validation accuracy, -1 before any (or when the metric is not accuracy)."""
        return self.best if self.best is not None and self.learner.metric == "accuracy" else -1.0

    def _metadata(self, finished: bool) -> dict[str, Any]:
        return {"method": self.learner.name, "step": self.step,
                "episodes": self.step * self.config.meta_batch, "best_accuracy": self.best_accuracy,
                "metric": self.learner.metric, "best_value": self.best,
                "elapsed_seconds": round(self.elapsed, 3), "finished": finished,
                "train_config": asdict(self.config)}

    def save_last(self, finished: bool = False) -> None:
        save_checkpoint(self.run_dir, "last", self._state(), self._metadata(finished))

    def resume(self) -> bool:
        """Restore the last checkpoint of ``run_dir``; False when there is none."""
        path = self.run_dir / "last.safetensors"
        if not path.is_file():
            self._truncate_metrics(0)  # killed before the first checkpoint: start afresh
            return False
        tensors, metadata = load_checkpoint(path)
        if metadata.get("method") != self.learner.name:
            raise KShotError(f"{path} is a {metadata.get('method')!r} checkpoint, not "
                             f"{self.learner.name!r}; use another --out directory")
        load_learner_state(self.learner, tensors, path)
        if self.optimizer is not None:
            state = self.optimizer.state_dict()
            for name, tensor in tensors.items():
                if name.startswith("optim."):
                    _, index, key = name.split(".", 2)
                    state["state"].setdefault(int(index), {})[key] = tensor
            self.optimizer.load_state_dict(state)
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        self.step = int(metadata["step"])
        best = metadata.get("best_value")
        if "best_value" not in metadata and metadata["best_accuracy"] >= 0:  # an older checkpoint
            best = metadata["best_accuracy"]
        self.best = None if best is None else float(best)
        self.elapsed = float(metadata["elapsed_seconds"])
        self._truncate_metrics(self.step * self.config.meta_batch)
        return True

    def _truncate_metrics(self, episodes: int) -> None:
        """Drop metrics lines logged after the checkpoint we resume from (they will be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["episodes"] <= episodes:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------------------------
    def validate(self) -> float | None:
        if self.val_sampler is None:
            return None
        report = evaluate(self.learner, self.val_sampler, self.config.val_episodes,
                          device=self.device)
        episodes = self.step * self.config.meta_batch
        metric = report.metric
        self._log({"kind": "val", "step": self.step, "episodes": episodes,
                   "seconds": round(self.elapsed, 3), metric: report.mean, "ci95": report.ci95})
        better = self.best is None or (report.mean > self.best if self.learner.higher_is_better
                                       else report.mean < self.best)
        if better:
            self.best = report.mean
            save_checkpoint(self.run_dir, "best", learner_state(self.learner),
                            {**self._metadata(False), f"val_{metric}": report.mean,
                             "val_ci95": report.ci95})
        return report.mean

    def _train_step(self, batch) -> dict[str, float]:
        """One optimiser step; the first compiled step falls back to eager if compiling fails."""
        try:
            metrics = self._backward(batch)
        except Exception as error:
            if not (self._compiled and type(error).__module__.startswith("torch._")):
                raise
            import warnings

            warnings.warn(f"kshot: the compiled backbone failed ({type(error).__name__}); "
                          "training in eager mode", RuntimeWarning, stacklevel=2)
            uncompile_backbone(self.learner)
            self._compiled = False
            metrics = self._backward(batch)
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.config.grad_clip)
            metrics = {**metrics, "grad_norm": float(norm)}
        self.optimizer.step()
        return metrics

    def _backward(self, batch) -> dict[str, float]:
        """The gradient of the batch's loss, in chunks of ``task_chunk`` episodes if set: each
        chunk's loss (and metrics) weighted by its share of the episodes."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.task_chunk and not hasattr(batch, "chunks"):
            raise KShotError(f"--task-chunk splits batches of episodes; {type(batch).__name__} "
                             "cannot be split")
        chunks = batch.chunks(self.config.task_chunk) if self.config.task_chunk else [batch]
        totals: dict[str, float] = {}
        for chunk in chunks:
            share = chunk.size / batch.size if len(chunks) > 1 else 1.0
            loss, metrics = self._loss(chunk)
            (loss * share if share != 1 else loss).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * share
        return totals

    def _loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.config.precision == "bf16"):
            return self.learner.loss(batch)

    def record_seen(self) -> None:
        """Write the run's ``classes.json`` (kshot.protocol) unless it has one: the classes it
        trains on, those its checkpoint is selected on, and those of runs whose weights it reuses."""
        if (self.run_dir / CLASSES_FILE).is_file():
            return
        learns = self.optimizer is not None and self.config.episodes > 0
        train = class_ids(self.train_sampler.dataset) if learns else ()
        val = class_ids(self.val_sampler.dataset) if learns and self.val_sampler is not None else ()
        write_seen(self.run_dir, train, val, inherited_classes(self.learner.config))

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or the time budget); returns a summary of the run."""
        from tqdm.auto import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record_seen()
        if resume:
            self.resume()
        config = self.config
        if self.optimizer is None:  # nothing to learn (kNN): record the model, mark it done
            self.validate()
            self.save_last(finished=True)
            return self._metadata(True)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.learner.train()
        self._compiled = compile_backbone(self.learner, self.compile)
        log_steps = max(1, config.log_every // config.meta_batch)
        val_steps = max(1, config.val_every // config.meta_batch)
        window: list[dict[str, float]] = []
        last_save = time.monotonic()
        started = time.monotonic() - self.elapsed
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.learner.name}",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        out_of_time = False
        try:
            while self.step < self.total_steps and self._stop_signal is None and not out_of_time:
                first = self.step * config.meta_batch
                batch = self.train_sampler.batch(range(first, first + config.meta_batch))
                batch = augment_episode(batch, config, self.step).to(self.device)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.learning_rate(self.step)
                self.learner.on_step(first)
                metrics = self._train_step(batch)
                self.step += 1
                self.elapsed = time.monotonic() - started
                window.append(metrics)
                bar.update(1)
                if self.step % log_steps == 0:
                    means = {key: sum(w[key] for w in window) / len(window) for key in window[0]}
                    self._log({"kind": "train", "step": self.step,
                               "episodes": self.step * config.meta_batch,
                               "seconds": round(self.elapsed, 3), **means,
                               "lr": self.learning_rate(self.step - 1)})
                    bar.set_postfix({key: f"{value:.3f}" for key, value in means.items()},
                                    best=f"{self.best:.3f}" if self.best is not None else "-")
                    window.clear()
                out_of_time = bool(config.time_budget) and self.elapsed >= config.time_budget
                if self.step % val_steps == 0 or self.step == self.total_steps or out_of_time:
                    self.validate()
                    self.save_last()
                    last_save = time.monotonic()
                elif time.monotonic() - last_save >= config.checkpoint_every_s:
                    self.save_last()
                    last_save = time.monotonic()
        finally:
            bar.close()
            uncompile_backbone(self.learner)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        finished = self.step >= self.total_steps or out_of_time
        self.save_last(finished=finished)
        if self._stop_signal is not None and not finished:
            raise KeyboardInterrupt(f"stopped at episode {self.step * config.meta_batch}; continue "
                                    "with --resume")
        return self._metadata(finished)
