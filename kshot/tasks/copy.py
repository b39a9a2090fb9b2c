"""The copy task (Graves, Wayne & Danihelka 2014, section 4.1), the chapter-3 sequence task.

A network sees a sequence of ``T`` random binary vectors of ``width`` bits, then a delimiter, and
must then output the sequence again with no input (zeros) to help it::

    step:      0 .. T-1           T           T+1 .. 2T
    input:     bits | 0           0 | 1       0 | 0            [B, 2T+1, width+1]
    target:                                   bits             [B, T, width]

The extra input channel is the delimiter flag. Outputs are logits of each bit; the loss is the
sigmoid binary cross-entropy over the output phase (the last ``T`` steps), and the paper's metric
is bits per sequence: the output thresholded at 0.5 (a logit above 0), wrong bits summed per
sequence, averaged over the batch.

:class:`CopyTask` is a task sampler like :class:`~kshot.tasks.base.TaskSampler`: sequence ``i`` is a
pure function of ``(seed, i)`` (its own ``torch.Generator``), ``batch(indices)`` stacks sequences
along a leading dimension. A :class:`CopyBatch` has the shape of an episode with no support set
(``support_x`` empty, ``query_x`` the input sequences, ``query_y`` the target bits), so the one
Trainer trains a copy model and the one evaluator scores it (the score of a sequence: its wrong
bits). Lengths are drawn uniformly in ``[min_length, max_length]`` (1–20, the
paper's training range) **once per batch**: every sequence of a batch has the length drawn by its
first index, so that they stack into one tensor (and a batch is still a pure function of its
indices: a resumed run sees the same batches). :meth:`CopyTask.fixed` gives the evaluation variant
of one length (the paper's generalisation test: 30, 40, 60 … after training on 1–20).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kshot.data.episodes import episode_seed
from kshot.errors import KShotError

EVAL_LENGTHS = (30, 40, 60)
"""Lengths the trained models are scored at beyond their training range (1–20)."""


@dataclass(frozen=True)
class CopyBatch:
    """A batch of copy sequences of one length ``length`` (``T``).

    ``inputs [B, 2T+1, width+1]`` (the bits, the delimiter, then zeros), ``targets [B, T, width]``
    (the bits, expected during the output phase: the last ``T`` steps of the model's outputs).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    length: int
    n_way: int = 1  # the episode view: one output per step, no classes
    k_shot: int = 0  # no support set

    # the episode view, for the Trainer and the evaluator: no support set, the sequences as queries
    @property
    def query_x(self) -> torch.Tensor:
        return self.inputs

    @property
    def query_y(self) -> torch.Tensor:
        return self.targets

    @property
    def support_x(self) -> torch.Tensor:
        return self.inputs[:, :0]

    @property
    def support_y(self) -> torch.Tensor:
        return self.targets.new_zeros(self.targets.shape[0], 0, dtype=torch.long)

    @property
    def width(self) -> int:
        return self.targets.shape[-1]

    @property
    def batch_size(self) -> int:
        return self.targets.shape[0]

    def output_phase(self, outputs: torch.Tensor) -> torch.Tensor:
        """The last ``T`` steps of ``outputs [B, 2T+1, width]``: what is compared with targets."""
        if outputs.ndim != 3 or outputs.shape[1] != 2 * self.length + 1:
            raise KShotError(f"copy outputs must be [batch, {2 * self.length + 1} steps, bits] for "
                             f"sequences of length {self.length}, got {tuple(outputs.shape)}")
        return outputs[:, -self.length:]

    def to(self, device: torch.device | str) -> CopyBatch:
        return CopyBatch(self.inputs.to(device), self.targets.to(device), self.length)


def copy_batch(sequences: Sequence[torch.Tensor] | torch.Tensor) -> CopyBatch:
    """A :class:`CopyBatch` from sequences of bits: a tensor ``[B, T, width]`` or a list of
    ``[T, width]`` tensors of the same length and width (0/1 values; any number is accepted and
    copied as is)."""
    if isinstance(sequences, torch.Tensor):
        if sequences.ndim != 3:
            raise KShotError(f"copy sequences must be [batch, length, width], got "
                             f"{tuple(sequences.shape)}")
        sequences = list(sequences)
    if not sequences:
        raise KShotError("a copy batch needs at least one sequence")
    shapes = [tuple(s.shape) for s in sequences]
    if any(len(shape) != 2 for shape in shapes):
        raise KShotError(f"each copy sequence must be [length, width], got shapes {shapes}")
    widths = sorted({shape[1] for shape in shapes})
    if len(widths) > 1:
        raise KShotError(f"the sequences of a copy batch must all have the same width, got widths "
                         f"{widths}; build one batch per width")
    lengths = sorted({shape[0] for shape in shapes})
    if len(lengths) > 1:
        raise KShotError(f"the sequences of a copy batch must all have the same length to stack, "
                         f"got lengths {lengths}; build one batch per length")
    length, width = shapes[0]
    if length < 1 or width < 1:
        raise KShotError(f"copy sequences need length >= 1 and width >= 1, got {length}×{width}")
    targets = torch.stack([s.float() for s in sequences])  # [B, T, width]
    inputs = torch.zeros(len(sequences), 2 * length + 1, width + 1)  # [B, 2T+1, width+1]
    inputs[:, :length, :width] = targets
    inputs[:, length, width] = 1.0  # the delimiter flag
    return CopyBatch(inputs, targets, length)


def bit_errors(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Wrong bits of each sequence: ``logits``, ``targets`` ``[B, T, width]`` -> ``[B]``; a bit is
    predicted 1 when its probability σ(logit) is above 0.5."""
    return ((logits > 0).float() != targets).float().sum((1, 2))


def copy_loss(outputs: torch.Tensor, batch: CopyBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid binary cross-entropy over the output phase (mean over bits) of ``outputs
    [B, 2T+1, width]`` (logits for every step of ``batch.inputs``), and the metrics ``loss`` and
    ``bits_per_sequence`` (wrong bits per sequence, mean over the batch)."""
    predicted = batch.output_phase(outputs)  # [B, T, width]
    if predicted.shape != batch.targets.shape:
        raise KShotError(f"copy outputs have {predicted.shape[-1]} bits per step, the targets "
                         f"{batch.width}; build the model with output size {batch.width}")
    loss = F.binary_cross_entropy_with_logits(predicted, batch.targets)
    return loss, {"loss": float(loss.detach()),
                  "bits_per_sequence": bits_per_sequence(predicted, batch.targets)}


def bits_per_sequence(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The paper's cost: wrong bits per sequence, mean over the batch (``[B, T, width]``)."""
    return float(bit_errors(logits.detach(), targets).mean())


class CopyTask:
    """Copy sequences ``start, start + 1, …`` of ``width`` bits and length in ``[min_length,
    max_length]`` (one length per batch: the one its first index draws); sequence ``i`` is a pure
    function of ``(seed, i)`` and the batch's length."""

    name = "copy"
    command = "ntm copy"  # the command that trains and scores its runs
    class_names: tuple[str, ...] = ()  # no classes: train and test differ by seed
    n_way = 1  # the sampler's episode view (kshot.evaluate reads these): one sequence per task,
    k_shot = 0  # no support set
    n_query = 1

    def __init__(self, width: int = 8, min_length: int = 1, max_length: int = 20, seed: int = 0,
                 start: int = 0) -> None:
        for label, value in (("width", width), ("min_length", min_length),
                             ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KShotError(f"copy task {label} must be an integer >= 1, got {value!r}")
        if min_length > max_length:
            raise KShotError(f"copy task min_length {min_length} is larger than max_length "
                             f"{max_length}; pass min_length <= max_length")
        self.width = width
        self.min_length = min_length
        self.max_length = max_length
        self.seed = seed
        self.start = start
        self.dataset = self  # what a run saw (no classes): kshot.protocol reads it

    @classmethod
    def fixed(cls, length: int, width: int = 8, seed: int = 0) -> CopyTask:
        """The evaluation variant: every sequence of length ``length``."""
        return cls(width, length, length, seed)

    @property
    def meta(self) -> dict[str, Any]:
        return {"namespace": self.name}

    @property
    def n_classes(self) -> int:
        return 0

    @property
    def item_shape(self) -> tuple[int, ...]:
        """What one step of a sequence is: ``(width + 1,)`` inputs."""
        return (self.input_size,)

    def sampler(self, k_shot: int = 0, n_query: int = 1, seed: int = 0) -> CopyTask:
        """The Trainer's view (``make_sampler``): the same task, seeded ``seed``; a sequence has no
        shots or queries, so ``k_shot`` and ``n_query`` are ignored."""
        return type(self)(self.width, self.min_length, self.max_length, seed)

    def with_shuffle(self, shuffle: bool = True) -> CopyTask:
        """The steps of a sequence are its order: nothing to shuffle."""
        return self

    @property
    def input_size(self) -> int:
        return self.width + 1

    @property
    def output_size(self) -> int:
        return self.width

    def length_of(self, index: int) -> int:
        """The length sequence ``index`` draws (the length of a batch it comes first in)."""
        generator = torch.Generator().manual_seed(episode_seed(self.seed, int(index)))
        return self._draw_length(generator)

    def _draw_length(self, generator: torch.Generator) -> int:
        return int(torch.randint(self.min_length, self.max_length + 1, (1,), generator=generator))

    def batch(self, indices: Sequence[int]) -> CopyBatch:
        indices = list(indices)
        if not indices:
            raise KShotError("a copy batch needs at least one sequence index")
        generators = [torch.Generator().manual_seed(episode_seed(self.seed, int(i)))
                      for i in indices]
        lengths = [self._draw_length(g) for g in generators]  # every generator draws its length
        length = lengths[0]
        bits = torch.stack([(torch.rand(length, self.width, generator=g) < 0.5).float()
                            for g in generators])  # [B, T, width]
        return copy_batch(bits)

    def task(self, index: int) -> CopyBatch:
        """Sequence ``index`` alone (a batch of one, its own length)."""
        return self.batch([index])

    def at(self, start: int) -> CopyTask:
        moved = copy.copy(self)
        moved.start = start
        return moved

    def __iter__(self) -> Iterator[CopyBatch]:
        index = self.start
        while True:
            yield self.task(index)
            index += 1
