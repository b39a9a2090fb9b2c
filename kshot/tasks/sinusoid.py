"""Sinusoid regression (Finn et al. 2017, section 5.1), the chapter-4 task family.

A task is ``y = A · sin(x - φ)`` seen at points ``x``; a learner gets ``k_shot`` points with their
values and predicts the value at the query points (mean squared error).

* ``finn`` (the MAML paper): amplitude ``A ~ U[0.1, 5]``, phase ``φ ~ U[0, π]``, ``x ~ U[-5, 5]``;
* ``book`` (the book's chapter-4 variant): the same amplitudes and points, phase 0 or π with equal
  probability (two families of curves, mirror images of each other).

``observation`` says what a learner is given for its support points in place of their values:

* ``labels`` (default): the values themselves (MAML, the pre-trained baseline);
* ``shifted``: the values seen in another domain, ``o = 1 - 0.6 · y + ε`` with ``ε ~ N(0, 0.05²)``
  (a fixed map the learner is not told; domain-adaptive meta-learning adapts from these
  observations without the values, as Yu et al.'s robot learns from a human video without its own
  actions);
* ``none``: zeros, the support points' positions alone (nothing about the task but where it is seen).

The query values are always the true ``y``. ``points`` (0: unlimited) gives each task a finite
number of points, like a user's own small regression data set: a sampler asking for more support
and query points than that is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kshot.errors import KShotError
from kshot.tasks.base import TaskFamily

VARIANTS = ("finn", "book")
OBSERVATIONS = ("labels", "shifted", "none")
SHIFT_SCALE, SHIFT_OFFSET, SHIFT_NOISE = -0.6, 1.0, 0.05


class SinusoidTasks(TaskFamily):
    item_shape = (1,)

    def __init__(self, variant: str = "finn", observation: str = "labels",
                 amplitude: tuple[float, float] = (0.1, 5.0),
                 x_range: tuple[float, float] = (-5.0, 5.0), points: int = 0) -> None:
        if variant not in VARIANTS:
            raise KShotError(f"sinusoid family must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if observation not in OBSERVATIONS:
            raise KShotError(f"sinusoid observation must be one of {', '.join(OBSERVATIONS)}, got "
                             f"{observation!r}")
        if isinstance(points, bool) or not isinstance(points, int) or points < 0:
            raise KShotError(f"points must be an integer >= 0 (0: unlimited), got {points!r}")
        self.points = points
        self.variant = variant
        self.observation = observation
        self.amplitude = amplitude
        self.x_range = x_range
        self.name = f"sinusoid-{variant}"

    def parameters(self, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitude and phase of each task ``[B]`` (drawn first from each task's generator)."""
        draws = torch.stack([torch.rand(2, generator=g) for g in generators])  # [B, 2]
        low, high = self.amplitude
        amplitude = low + (high - low) * draws[:, 0]
        if self.variant == "finn":
            phase = math.pi * draws[:, 1]
        else:
            phase = math.pi * (draws[:, 1] < 0.5).float()
        return amplitude, phase

    def draw(self, generators: Sequence[torch.Generator], n_items: int):
        amplitude, phase = self.parameters(generators)
        low, high = self.x_range
        uniform = torch.stack([torch.rand(n_items, generator=g) for g in generators])  # [B, n]
        x = low + (high - low) * uniform
        y = amplitude[:, None] * torch.sin(x - phase[:, None])
        if self.observation == "labels":
            observed = y
        elif self.observation == "none":
            observed = torch.zeros_like(y)
        else:
            noise = torch.stack([torch.randn(n_items, generator=g) for g in generators])
            observed = SHIFT_OFFSET + SHIFT_SCALE * y + SHIFT_NOISE * noise
        return x.unsqueeze(-1), y, observed

    def curve(self, generator: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        """The true curve of the task drawn from ``generator`` at points ``x`` (for plots)."""
        amplitude, phase = self.parameters([generator])
        return amplitude * torch.sin(x - phase)
