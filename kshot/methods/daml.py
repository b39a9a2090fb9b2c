"""Domain-adaptive meta-learning (Yu, Finn et al., RSS 2018), as the book's chapter-4 exercise
poses it on sinusoid regression.

MAML adapts with the task's own labelled loss. Domain-adaptive meta-learning adapts with a
**learned adaptation loss** computed without the task's labels: the inner step is

    θ' = θ - α ∇θ L_ψ(θ),    L_ψ(θ) = mean over the support points k of ‖ψ(x_k, f_θ(x_k), o_k)‖²

where ``o_k`` is what is observed of the task at ``x_k`` in another domain, and ψ is a small network.
The outer loop trains the initialisation θ and ψ together on the labelled loss of the adapted model
on the queries, MSE(f_θ'(x_q), y_q); ψ is learned only through the second-order term (how the inner
gradient depends on it), so DAML is always second order.

How it maps onto the paper:

* the paper's human video of the task (the new task demonstrated by a person, with no robot
  actions) is the support observation ``o``: the task seen in another domain, not its labels
  (``kshot.tasks.sinusoid`` ``observation="shifted"``: ``o = 1 - 0.6 y + ε``, a map the learner is
  never told, or ``"none"``: nothing about the task but where it is seen);
* the robot's own demonstration, with its actions, is the labelled outer loss on the queries: used
  in meta-training only; at test the model adapts from the observations alone;
* the paper's learned temporal-convolution loss over the policy's activations is ψ, a small MLP
  over the input, the model's output and the observation at each point, squared.

Everything else (the MLP, inner steps and rates, Meta-SGD, the vmapped meta-batch) is MAML's
(:mod:`kshot.methods.maml`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kshot.config import AT_LEAST_ONE, check_ranges
from kshot.errors import KShotError
from kshot.methods.base import register
from kshot.methods.maml import MAML, MAMLConfig, regression_mlp


@dataclass
class DAMLConfig(MAMLConfig):
    loss_hidden: tuple[int, ...] = (40, 40)
    """Hidden sizes of the adaptation-loss network ψ."""
    loss_outputs: int = 1
    """Outputs of ψ; the adaptation loss is the mean squared norm of them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, loss_hidden=AT_LEAST_ONE, loss_outputs=AT_LEAST_ONE)
        if self.first_order or self.first_order_episodes:
            raise KShotError("--first-order and --first-order-episodes do not apply to daml: its "
                             "adaptation loss learns only through the second-order term")


@register
class DAML(MAML):
    """Domain-adaptive meta-learning: adapt with a learned loss of unlabelled observations."""

    name = "daml"
    Config = DAMLConfig

    def __init__(self, config: DAMLConfig, item_shape: tuple[int, ...]) -> None:
        if len(item_shape) != 1:
            raise KShotError(f"daml adapts regression models of 1-d items (sinusoid), not items of "
                             f"shape {tuple(item_shape)}")
        super().__init__(config, item_shape)
        inputs = item_shape[0] + 2  # x, f(x), the observation at x
        self.adaptation_loss = nn.Sequential(*regression_mlp(inputs, config.loss_hidden,
                                                             config.loss_outputs)[:-1])

    def adaptation_objective(self, params, support_x: torch.Tensor,
                             observed: torch.Tensor) -> torch.Tensor:
        """L_ψ of one task: ``support_x [K, d]``, ``observed [K]`` (no labels)."""
        outputs = self.model(params, support_x)  # [K]
        features = torch.cat([support_x, outputs[:, None], observed[:, None]], -1)
        return self.adaptation_loss(features).pow(2).sum(-1).mean()

    def adapt(self, params, support_x, support_y, steps: int, rates, first_order: bool):
        """``support_y`` holds the task's observations here, never its labels."""
        def objective(p):
            return self.adaptation_objective(p, support_x, support_y)

        return self.descend(params, objective, steps, rates, first_order)

    def is_first_order(self) -> bool:
        return False
