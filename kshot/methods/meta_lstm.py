"""The LSTM meta-learner (Ravi & Larochelle, ICLR 2017, "Optimization as a model for few-shot
learning").

A learned optimiser trains a small classifier (the learner: Conv4 with 32 filters and a linear head
of ``n_way`` outputs) on each episode's support set in ``T`` updates; the query loss of the trained
learner trains the optimiser and the learner's initial parameters. The update is an LSTM whose cell
state *is* the learner's flattened parameter vector θ (every scalar parameter is one coordinate)::

    c_t = f_t ⊙ c_{t-1} + i_t ⊙ (-∇_t)                         c_0 = θ_0 (learned), θ_t = c_t
    i_t = σ(W_I · [h_t, c_{t-1}, i_{t-1}] + b_I)                (the learning rate of a coordinate)
    f_t = σ(W_F · [h_t, c_{t-1}, f_{t-1}] + b_F)                (its forgetting: decay of θ)

With f_t = 1 and i_t = α this is gradient descent with rate α. ``∇_t`` and ``L_t`` are the gradient
and loss of the learner θ_{t-1} on the support set; ``h_t`` is the hidden state of a first,
standard LSTM cell (``hidden_size`` units, 20 in the paper) whose input per coordinate is four
numbers: the preprocessed gradient of the coordinate and the preprocessed loss of its task
(Andrychowicz et al. 2016, p = 10)::

    x -> (log(|x|) / p, sign(x))   if |x| >= e^-p
         (-1, e^p · x)             otherwise

Both layers are coordinate-wise: their weights are shared by every coordinate, so the meta-learner
has a few thousand parameters whatever the learner's size. As in the paper the loss and gradient
inputs are constants for the outer update (second derivatives dropped: ∇_t is computed on a
detached θ_{t-1}, so the support passes are not in the outer graph); the outer loss still reaches
W_I, W_F, b_I, b_F, the first LSTM and θ_0 through c_t and the gates' inputs c_{t-1}.

Batched: the tasks of a meta-batch have their own θ, a ``[B, P]`` tensor; each update runs the
learner on every task's support set as one vmapped pass (:mod:`kshot.nn.functional`, per-task
gradients from ``torch.func.grad``), then both LSTM layers on all ``B·P`` coordinates in one tensor
operation. Only the ``T`` updates are a Python loop.

Choices where the paper leaves freedom:

* Initialisation: as the paper asks, a large forget bias (f starts near 1: no forgetting) and a
  small input bias (a small first learning rate), with the ranges of the public reimplementations:
  b_F ~ U[4, 6], b_I ~ U[-5, -4] (σ(b_I) ≈ 0.01); every other weight of both layers ~
  U[-0.01, 0.01]; i_0 = f_0 = 0, and the first LSTM starts from zero states in each episode.
* Batch norm normalises every pass by its own batch (one task's support or query items: the
  paper's per-episode statistics); ``norm running`` scores with the running averages instead.
  Batch-norm scales and shifts are coordinates like every other parameter.
* Updates: T = ``inner_steps`` = 5 in training, each on the whole support set, and by default the
  same T at test (``test_inner_steps`` 0): the gates (the learning rates and decays of each step)
  are trained for that horizon, and more steps at test extrapolate it; set ``test_inner_steps`` to
  try more. Ravi & Larochelle's code makes more updates at 1-shot (12 on miniImageNet, 15 in its
  Omniglot configuration): ``--inner-steps 12`` trains that horizon at about twice the cost per
  episode, and on Omniglot 5-way 1-shot it scored lower than T = 5 in the same two hours
  (BENCHMARKS.md, fifteenth session).
* Meta-batch and clipping: the paper meta-trains on one episode per step, and its code clips the
  meta-gradient's norm to 0.25 (the Trainer's ``grad_clip``). At 1-shot ``train_defaults`` is that
  recipe: on Omniglot 5-way 1-shot, two hours of two cores, it scored 97.36 / 97.20 (EVAL_SEED 123
  / 7) against 97.04 / 96.88 with 4 episodes per step unclipped, at the same cost per episode
  (BENCHMARKS.md, sixteenth session). At more shots the defaults stay 4 episodes per step, unclipped:
  the recipe of the 5-way 5-shot figure (99.13), where the paper's has not been tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad_and_value

from kshot.config import AT_LEAST_ONE, NON_NEGATIVE, check_choice, check_ranges
from kshot.data.episodes import Episode
from kshot.errors import KShotError
from kshot.methods.base import Learner, accuracy, register
from kshot.nn.backbones import Conv4
from kshot.nn.functional import NORMS, CompiledTraining, Params, TaskModel

PREPROCESS_P = 10.0
"""p of the gradient and loss preprocessing (Andrychowicz et al.: 10)."""
FORGET_BIAS_INIT = (4.0, 6.0)
"""b_F is drawn uniformly from this range (Ravi & Larochelle's code)."""
INPUT_BIAS_INIT = (-5.0, -4.0)
"""b_I is drawn uniformly from this range: a first learning rate σ(b_I) of 0.007 to 0.018."""
WEIGHT_INIT = 0.01
"""Every other weight of the meta-learner is drawn from U[-this, this]."""


@dataclass
class MetaLSTMConfig:
    n_way: int = 5
    """Outputs of the learner's classifier head: the way of the episodes it trains and is tested on
    (``kshot train`` sets it from --ways)."""
    inner_steps: int = 5
    """Updates T of the learner on the support set in training."""
    test_inner_steps: int = 0
    """Updates at test (0: the training number; the gates are trained for that horizon)."""
    hidden_size: int = 20
    """Hidden units of the meta-learner's first LSTM layer (the paper: 20)."""
    hidden: int = 32
    """Filters of each Conv4 block of the learner (the paper: 32)."""
    norm: str = "episode"
    """Batch norm at test: episode (each pass normalised by its own batch's statistics, as the
    paper) or running (the running averages of training); training always uses batch statistics."""

    def __post_init__(self) -> None:
        check_ranges(self, n_way=AT_LEAST_ONE, inner_steps=AT_LEAST_ONE,
                     test_inner_steps=NON_NEGATIVE, hidden_size=AT_LEAST_ONE, hidden=AT_LEAST_ONE)
        check_choice(self, "norm", NORMS)


def preprocess(x: torch.Tensor, p: float = PREPROCESS_P, dim: int = -1) -> torch.Tensor:
    """Andrychowicz et al.'s scaling of gradients and losses: each value of ``x`` as the pair
    (log(|x|) / p, sign(x)) when |x| >= e^-p, else (-1, e^p x), stacked along a new ``dim``."""
    threshold = math.exp(-p)
    large = x.abs() >= threshold
    magnitude = torch.where(large, x.abs().clamp_min(threshold).log() / p, -torch.ones_like(x))
    direction = torch.where(large, x.sign(), x * math.exp(p))
    return torch.stack([magnitude, direction], dim)


class MetaLearnerCell(nn.Module):
    """The second layer: an LSTM cell whose state is the learner's parameters, one coordinate per
    column. ``c_t = f_t c_{t-1} - i_t ∇_t`` with the input gate i_t (learning rate) and the forget
    gate f_t computed from the first layer's ``h_t``, ``c_{t-1}`` and the gate's previous value."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.input_gate = nn.Linear(hidden_size + 2, 1)  # W_I, b_I; inputs [h, c, i_prev]
        self.forget_gate = nn.Linear(hidden_size + 2, 1)  # W_F, b_F; inputs [h, c, f_prev]
        for gate, bias in ((self.input_gate, INPUT_BIAS_INIT), (self.forget_gate, FORGET_BIAS_INIT)):
            nn.init.uniform_(gate.weight, -WEIGHT_INIT, WEIGHT_INIT)
            nn.init.uniform_(gate.bias, *bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, gradient: torch.Tensor,
                i_prev: torch.Tensor, f_prev: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``h [H, N]`` (coordinates last), ``c``, ``gradient``, ``i_prev``, ``f_prev [N]`` ->
        ``(c_t, i_t, f_t)``, each ``[N]``."""
        weights = torch.cat([self.input_gate.weight, self.forget_gate.weight])  # [2, H + 2]
        biases = torch.cat([self.input_gate.bias, self.forget_gate.bias])
        hidden = len(h)
        gates = torch.addmm(biases[:, None], weights[:, :hidden], h)  # [2, N]
        gates = gates + weights[:, hidden, None] * c + weights[:, hidden + 1, None] * torch.stack(
            [i_prev, f_prev])
        i, f = torch.sigmoid(gates).unbind(0)
        return f * c - i * gradient, i, f


def lstm_cell(cell: nn.LSTMCell, x: torch.Tensor, h: torch.Tensor,
              c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.LSTMCell``'s arithmetic with its parameters, coordinates last: ``x [I, N]``, ``h, c
    [H, N]`` -> ``(h_t, c_t)``. The gate blocks are contiguous rows, so every element-wise operation
    is one vectorised pass (forward and backward 1.4 to 2× faster on CPU than the cell
    on ``[N, I]``)."""
    gates = torch.addmm((cell.bias_ih + cell.bias_hh)[:, None], cell.weight_ih, x)
    gates = gates.addmm_(cell.weight_hh, h)  # [4H, N]: the blocks of i, f, g, o
    i, f, g, o = gates.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@register
class MetaLSTM(CompiledTraining, Learner):
    """The LSTM meta-learner: a learned, coordinate-wise update rule and initialisation.

    Trained compiled by default (:class:`~kshot.nn.functional.CompiledTraining`): about 1.3×
    faster per step at 5-way 1-shot (4 tasks, 2 threads) after about 3 minutes of compiling. On
    Omniglot's binary images its loss differs from eager's in the third decimal: max-pool windows
    with equal (or nearly equal) maxima send the inner gradients, which feed the forward pass here,
    to different but equally valid pixels; with the ties broken by 5% noise, compiled and eager
    float32 both agree with float64 to about 1e-6 (the first layer's weights 7e-4).
    """

    name = "meta-lstm"
    Config = MetaLSTMConfig
    test_options = ("test_inner_steps", "norm")

    def __init__(self, config: MetaLSTMConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        if len(item_shape) != 3 or item_shape[1] != item_shape[2]:
            raise KShotError(f"meta-lstm's learner is a Conv4 for square images [C, H, W], got "
                             f"items of shape {tuple(item_shape)}")
        backbone = Conv4(item_shape[0], item_shape[-1], config.hidden)  # its blocks, plain layout
        self.net = nn.Sequential(backbone.features, nn.Flatten(),
                                 nn.Linear(backbone.out_dim, config.n_way))  # θ_0 = c_0
        self.model = TaskModel(self.net, config.norm)
        self.lstm = nn.LSTMCell(4, config.hidden_size)
        for weight in self.lstm.parameters():
            nn.init.uniform_(weight, -WEIGHT_INIT, WEIGHT_INIT)
        self.cell = MetaLearnerCell(config.hidden_size)
        self.steps = config.inner_steps
        self.test_steps = config.test_inner_steps or config.inner_steps

    # ------------------------------------------------------------------ the contract's extras
    @classmethod
    def train_defaults(cls, ways: int | None, shots: int) -> dict:
        """5-way unless told, 15 queries per class and Adam (Ravi & Larochelle), 1e-3 constant and
        50,000 training episodes (the public reimplementations'); at 1-shot the paper's 1 episode
        per step with its code's meta-gradient clip of 0.25, at more shots 4 per step unclipped
        (module docstring); validation on episodes of the training way (the head's outputs)."""
        ways = ways or 5
        paper = shots == 1  # the paper's recipe, measured better at 1-shot (module docstring)
        return {"ways": ways, "meta_batch": 1 if paper else 4, "grad_clip": 0.25 if paper else 0.0,
                "queries": 15, "lr": 1e-3, "schedule": "constant", "episodes": 50000,
                "val_every": 2000, "val_episodes": 200, "val_ways": ways, "val_shots": shots,
                "log_every": 200}

    @classmethod
    def config_defaults(cls, train_config) -> dict:
        return {"n_way": train_config.ways}

    @property
    def adapts_at_test(self) -> bool:
        return True

    # ------------------------------------------------------------------ the algorithm
    def flat_parameters(self) -> torch.Tensor:
        """The learner's initial parameters θ_0 as one vector ``[P]`` (the order of ``self.net``)."""
        return torch.cat([p.reshape(-1) for p in self.net.parameters()])

    def unflatten(self, flat: torch.Tensor) -> Params:
        """``[B, P]`` -> the learner's parameters by name, each ``[B, *shape]``."""
        params, start = {}, 0
        for name, p in self.net.named_parameters():
            params[name] = flat[:, start : start + p.numel()].reshape(len(flat), *p.shape)
            start += p.numel()
        return params

    def support_gradients(self, params: Params, support_x: torch.Tensor,
                          support_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient ``[B, P]`` and loss ``[B]`` of each task's support loss at ``params``, detached
        (the paper's assumption: they do not depend on the meta-learner)."""
        def task(p, sx, sy):
            return grad_and_value(lambda q: F.cross_entropy(self.model(q, sx), sy))(p)

        detached = {name: value.detach() for name, value in params.items()}
        grads, losses = self.model.map(task, detached, support_x, support_y, batched_params=True)
        flat = torch.cat([grads[name].reshape(len(losses), -1) for name, _ in
                          self.net.named_parameters()], 1)
        return flat.detach(), losses.detach()

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> Params:
        """The learner's parameters of every task after ``steps`` meta-learner updates on its support
        set: by name, each ``[B, *shape]``."""
        n_tasks = len(support_x)
        c = self.flat_parameters().expand(n_tasks, -1)  # [B, P]
        coordinates = c.numel()
        i = f = c.new_zeros(coordinates)
        h = cell = c.new_zeros(self.config.hidden_size, coordinates)  # the first layer's state
        for _ in range(steps):
            gradient, loss = self.support_gradients(self.unflatten(c), support_x, support_y)
            inputs = torch.cat([preprocess(gradient, dim=0),  # [4, B, P]
                                preprocess(loss, dim=0)[:, :, None].expand(-1, -1, c.shape[1])])
            h, cell = lstm_cell(self.lstm, inputs.view(4, coordinates), h, cell)
            c, i, f = self.cell(h, c.reshape(-1), gradient.view(-1), i, f)
            c = c.view(n_tasks, -1)
        return self.unflatten(c)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        """Train the learner on the support set (``test_inner_steps`` in eval mode), predict the
        queries: logits ``[Q, N]`` (``[B, Q, N]`` for a batch). Gradients are computed even under
        ``torch.no_grad``; the outer graph is kept only with grad enabled."""
        batched, (support_x, support_y, query_x) = self._checked_batch(support_x, support_y,
                                                                       query_x)
        logits = self.adapted_logits(support_x, support_y, query_x,
                                     self.steps if self.training else self.test_steps)
        return logits if batched else logits[0]

    def _checked_batch(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       *others: torch.Tensor) -> tuple[bool, tuple[torch.Tensor, ...]]:
        """:meth:`task_batch` with the way checked against the head."""
        batched, tensors = self.task_batch(support_x, support_y, *others)
        self.check_way(tensors[1], self.config.n_way)
        return batched, tensors

    def adapted_logits(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       query_x: torch.Tensor, steps: int) -> torch.Tensor:
        """Query logits ``[B, Q, N]`` of every task after ``steps`` meta-learner updates."""
        params = self.adapt(support_x, support_y, steps)
        return self.model.map(self.model, params, query_x, batched_params=True)

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """The query loss after the training schedule's updates (:meth:`meta_objective`)."""
        _, (support_x, support_y, query_x, query_y) = self._checked_batch(
            episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        loss, logits = self.training_objective(support_x, support_y, query_x, query_y, self.steps)
        if self.training:
            self.model.update_running(support_x.flatten(0, 1))
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy(logits, query_y)}

    def meta_objective(self, support_x, support_y, query_x, query_y,
                       steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query loss, detached logits)`` of a batch of tasks after ``steps`` updates: a pure
        function of the inputs and the parameters (:class:`~kshot.nn.functional.CompiledTraining`)."""
        logits = self.adapted_logits(support_x, support_y, query_x, steps)
        return F.cross_entropy(logits.flatten(0, -2), query_y.flatten()), logits.detach()
