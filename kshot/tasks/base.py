"""The task-sampler contract shared by every task family (sinusoid regression, copy task)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from kshot.config import check_count
from kshot.data.episodes import Episode, episode_seed
from kshot.errors import KShotError


class TaskFamily:
    """A family of tasks, the counterpart of a ``ClassDataset`` for tasks that are not drawn from
    classes. Subclasses set ``name`` and ``item_shape`` and implement :meth:`draw`.

    A family has no classes (``class_names`` is empty): its test tasks differ from its training
    tasks by their seed, which is what the Trainer and the evaluator already keep apart.
    """

    name: str = ""
    n_way: int = 1  # regression: one output per item; Episode.n_query is the query count
    item_shape: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    points: int = 0  # items each task has (0: as many as asked for, drawn afresh)

    @property
    def meta(self) -> dict[str, Any]:
        return {"namespace": self.name}

    @property
    def n_classes(self) -> int:
        return 0

    def draw(self, generators: Sequence[torch.Generator], n_items: int) -> tuple[torch.Tensor, ...]:
        """``len(generators)`` tasks of ``n_items`` items each, task ``b`` from ``generators[b]``
        alone: ``(x [B, n_items, *item_shape], y [B, n_items, ...], observed [B, n_items, ...])``,
        ``observed`` being what a learner is given for the support items in place of ``y``."""
        raise NotImplementedError

    def sampler(self, k_shot: int, n_query: int, seed: int = 0) -> TaskSampler:
        return TaskSampler(self, k_shot, n_query, seed)


class TaskSampler:
    """Tasks ``start, start + 1, …`` of ``family``, each with ``k_shot`` support and ``n_query``
    query items; task ``i`` is a pure function of ``(seed, i)`` (its own ``torch.Generator``), so a
    batch holds the same tasks whatever the batch size, and a resumed run sees the same tasks."""

    def __init__(self, family: TaskFamily, k_shot: int, n_query: int, seed: int = 0,
                 start: int = 0) -> None:
        check_count("k_shot", k_shot, "--shots")
        check_count("n_query", n_query, "--queries")
        if family.points and k_shot + n_query > family.points:
            raise KShotError(f"k_shot + n_query = {k_shot + n_query} is more than the "
                             f"{family.points} points of each {family.name} task; ask for fewer "
                             "shots or queries")
        self.family = family
        self.dataset = family  # what the run saw (no classes): kshot.protocol reads it
        self.n_way = family.n_way
        self.k_shot = k_shot
        self.n_query = n_query
        self.seed = seed
        self.start = start

    def __iter__(self) -> Iterator[Episode]:
        index = self.start
        while True:
            yield self.task(index)
            index += 1

    def with_shuffle(self, shuffle: bool = True) -> TaskSampler:
        """Items of a task are drawn independently, in no order: nothing to shuffle."""
        return self

    def at(self, start: int) -> TaskSampler:
        moved = copy.copy(self)
        moved.start = start
        return moved

    def task(self, index: int) -> Episode:
        return self.batch([index]).unbatch()[0]

    def batch(self, indices: Sequence[int]) -> Episode:
        generators = [torch.Generator().manual_seed(episode_seed(self.seed, int(i))) for i in indices]
        x, y, observed = self.family.draw(generators, self.k_shot + self.n_query)
        k = self.k_shot
        return Episode(x[:, :k], observed[:, :k], x[:, k:], y[:, k:], self.n_way, self.k_shot)
