"""Task families beside class datasets: tasks that are not drawn from a ``ClassDataset``.

A family (sinusoid regression, the copy task) gives a :class:`~kshot.tasks.base.TaskSampler` with
the shape of :class:`~kshot.data.episodes.EpisodeSampler`: task ``i`` is a pure function of
``(seed, i)``, ``batch(indices)`` stacks tasks along a leading dimension as an
:class:`~kshot.data.episodes.Episode`, and the one Trainer and the one evaluator use it unchanged. The copy task of the Neural Turing Machine
(:mod:`kshot.tasks.copy`) has sequences rather than support and query sets: its sampler has the
same pure-function contract, and its batch type the shape of an episode with no support set.
"""

from kshot.tasks.base import TaskFamily, TaskSampler
from kshot.tasks.copy import EVAL_LENGTHS, CopyBatch, CopyTask, copy_loss
from kshot.tasks.sinusoid import SinusoidTasks

FAMILIES = {"sinusoid": SinusoidTasks, "copy": CopyTask}
"""Task families by the data set name of their runs' records."""

__all__ = ["EVAL_LENGTHS", "FAMILIES", "CopyBatch", "CopyTask", "SinusoidTasks", "TaskFamily",
           "TaskSampler", "copy_loss"]
