"""Task families beside class datasets: tasks that are not drawn from a ``ClassDataset``.

A family (sinusoid regression, the copy task) gives a :class:`~kshot.tasks.base.TaskSampler` with
the shape of :class:`~kshot.data.episodes.EpisodeSampler`: task ``i`` is a pure function of
``(seed, i)``, ``batch(indices)`` stacks tasks along a leading dimension as an
:class:`~kshot.data.episodes.Episode`, and the one Trainer and the one evaluator use it unchanged.
"""

from kshot.tasks.base import TaskFamily, TaskSampler
from kshot.tasks.sinusoid import SinusoidTasks

FAMILIES = {"sinusoid": SinusoidTasks}

__all__ = ["FAMILIES", "SinusoidTasks", "TaskFamily", "TaskSampler"]
