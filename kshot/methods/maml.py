"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), Meta-SGD (Li et al. 2017) as a
switch, and the fine-tuned baseline the MAML paper compares with.

MAML learns an initialisation θ from which a few gradient steps on a task's support set give a
good model for that task: for each task of a meta-batch, θ'ᵢ = θ - α ∇θ L(support; θ) (repeated
``inner_steps`` times), and θ is trained on Σᵢ L(query; θ'ᵢ). Second order differentiates through
the inner gradients; first order (``--first-order``, or the first ``first_order_episodes`` of
training as a warm-up) treats them as constants. With ``meta_sgd`` each parameter tensor gets its
own learned element-wise inner rate α (initialised to ``inner_lr``), trained with θ.
``inner_params`` chooses which parameters the inner steps adapt: all of them (the default), all but
batch norm's (Finn et al.'s code, whose batch-norm variables are outside the adapted weights), or
the head alone (ANIL, Raghu et al. 2020); the others are constants of the inner loop, learned by the
outer loop only.

The model is any ``nn.Module`` run through ``torch.func`` (:mod:`kshot.nn.functional`): no special
layers, no module copies, the tasks of a meta-batch run as one vmapped pass. Batch norm follows
``norm`` (per-episode statistics, as the paper, or running statistics); the LSTM meta-learner and
DAML share the same machinery.

Models: images get Conv4 (``hidden`` filters, 64 in the paper) and a linear head of ``n_way``
outputs; 1-d regression tasks (sinusoid) get the paper's MLP (``mlp`` hidden sizes, ReLU).
The inner and outer losses are cross-entropy for classification and mean squared error for
regression; the evaluator reports accuracy or MSE respectively.

``pretrained`` is the paper's baseline: the same model trained on all tasks jointly (no inner loop
in training: the query and support points of every task are plain training data), adapted at test
by the same gradient steps as MAML.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

from kshot.config import AT_LEAST_ONE, NON_NEGATIVE, check_choice, check_ranges
from kshot.data.episodes import Episode
from kshot.methods.base import Learner, accuracy, register
from kshot.nn.backbones import DOWNSAMPLES, Conv4
from kshot.nn.functional import NORMS, CompiledTraining, TaskBatchNorm, TaskModel, sgd_step

INNER_LOSSES = ("mean", "class_sum")
INNER_PARAMS = ("all", "no_norm", "head")


@dataclass
class MAMLConfig:
    n_way: int = 5
    """Outputs of the classifier head: the way of the episodes it trains and is tested on
    (``kshot train`` sets it from --ways)."""
    inner_steps: int = 0
    """Gradient steps on the support set in training (0: the paper's, 1 for 5-way, 5 for 20-way;
    sinusoid: 1)."""
    inner_lr: float = 0.0
    """Inner learning rate α (0: the paper's, 0.4 for 5-way, 0.1 for 20-way; sinusoid: 0.01)."""
    test_inner_steps: int = 0
    """Gradient steps at test (0: the paper's evaluation, 3 for 5-way and 5 for 20-way on images;
    10 on sinusoid)."""
    test_inner_lr: float = 0.0
    """Inner learning rate at test (0: the training one)."""
    inner_loss: str = "mean"
    """The support loss the inner steps descend (classification; regression takes the mean): mean
    (the mean cross-entropy of the N·K support items, as learn2learn and most PyTorch code) or
    class_sum (the items' sum divided by K, N times the mean: Finn et al.'s code, whose ``xent`` is
    per item over ``update_batch_size`` and whose ``tf.gradients`` sums it, so their α = 0.4
    (5-way) and 0.1 (20-way) are steps of 2.0 on the mean). The outer loss is the mean either way
    (Adam does not see its scale). Mean is the default: on the max-pooled Conv4, whose every
    parameter (batch norm's included) adapts, class_sum at 5-way 1-shot trained far slower
    (BENCHMARKS.md, eighteenth session)."""
    inner_params: str = "all"
    """The parameters the inner steps adapt: all; no_norm (all but batch norm's, learned by the
    outer loop only: Finn et al.'s code, whose ``tf.contrib.layers.batch_norm`` variables are
    outside the dictionary of adapted weights, and whose batch norm has no scale, where kshot's
    keeps one); or head (the last layer alone: ANIL, Raghu et al. 2020, "almost no inner loop",
    whose inner steps do not differentiate through the body). Meta-SGD learns rates for the adapted
    parameters only."""
    first_order: bool = False
    """First-order MAML: the inner gradients are constants for the outer update."""
    first_order_episodes: int = 0
    """Warm-up: train first order for this many episodes, then second order."""
    meta_sgd: bool = False
    """Meta-SGD: learn an element-wise inner rate per parameter, initialised to the inner rate."""
    norm: str = "episode"
    """Batch norm at test: episode (each pass normalised by its own batch's statistics, as the
    paper) or running (the running averages of training); training always uses batch statistics."""
    hidden: int = 64
    """Filters of each Conv4 block (the paper: 64)."""
    downsample: str = "max"
    """How each Conv4 block halves the map: max (a 2×2 max-pool, the Conv4 of Vinyals et al. and
    Snell et al.) or stride (a stride-2 convolution, the last map averaged: Finn et al.'s Omniglot
    network, about 2.8× more meta-iterations per second on one CPU core). ``kshot train maml`` on
    images defaults to stride, the paper's; max here keeps runs stored before this field as they
    were trained."""
    mlp: tuple[int, ...] = (40, 40)
    """Hidden sizes of the regression MLP (the paper: 40, 40)."""

    def __post_init__(self) -> None:
        check_ranges(self, n_way=AT_LEAST_ONE, inner_steps=NON_NEGATIVE, inner_lr=NON_NEGATIVE,
                     test_inner_steps=NON_NEGATIVE, test_inner_lr=NON_NEGATIVE,
                     first_order_episodes=NON_NEGATIVE, hidden=AT_LEAST_ONE, mlp=AT_LEAST_ONE)
        check_choice(self, "norm", NORMS)
        check_choice(self, "downsample", DOWNSAMPLES)
        check_choice(self, "inner_loss", INNER_LOSSES)
        check_choice(self, "inner_params", INNER_PARAMS)


def paper_schedule(config: MAMLConfig, regression: bool) -> tuple[int, float, int, float]:
    """(train steps, train rate, test steps, test rate) with the zeros of ``config`` filled in by
    the paper's settings: Omniglot 5-way 1 step α = 0.4, 20-way 5 steps α = 0.1; sinusoid 1 step
    α = 0.01, evaluated after up to 10 steps."""
    if regression:
        steps, rate, test_steps = 1, 0.01, 10
    elif config.n_way <= 5:
        steps, rate, test_steps = 1, 0.4, 3
    else:
        steps, rate, test_steps = 5, 0.1, 5
    steps = config.inner_steps or steps
    rate = config.inner_lr or rate
    return steps, rate, config.test_inner_steps or test_steps, config.test_inner_lr or rate


def regression_mlp(in_features: int, hidden: tuple[int, ...], out_features: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, out_features), nn.Flatten(0))


def inner_parameter_names(net: nn.Module, which: str) -> tuple[str, ...]:
    """The names of the parameters of ``net`` that the inner steps adapt (``MAMLConfig.inner_params``):
    all, all but those of batch-norm layers, or those of the last module that holds parameters
    (the head)."""
    names = [name for name, _ in net.named_parameters()]
    if which == "all":
        return tuple(names)
    owners = [(prefix, module) for prefix, module in net.named_modules()
              if next(module.parameters(recurse=False), None) is not None]
    if which == "head":
        kept = {owners[-1][0]}
    else:
        norms = (TaskBatchNorm, nn.modules.batchnorm._BatchNorm)
        kept = {prefix for prefix, module in owners if not isinstance(module, norms)}
    return tuple(name for name in names if name.rpartition(".")[0] in kept)


def build_task_model(config: MAMLConfig, item_shape: tuple[int, ...]) -> tuple[nn.Module, bool]:
    """The adapted network and whether the tasks are regression (1-d items) or classification."""
    if len(item_shape) == 1:
        return regression_mlp(item_shape[0], config.mlp), True
    backbone = Conv4(item_shape[0], item_shape[-1], config.hidden,  # its blocks, plain layout
                     config.downsample)
    return nn.Sequential(backbone.features, nn.Flatten(),
                         nn.Linear(backbone.out_dim, config.n_way)), False


@register
class MAML(CompiledTraining, Learner):
    """MAML: an initialisation adapted to each task by gradient steps on its support set.

    Trained compiled by default (:class:`~kshot.nn.functional.CompiledTraining`). Second order on
    Conv4, 2 CPU threads: about 1.15× more meta-iterations/s at 5-way 1-shot (1 inner step; the
    first step compiles for about a minute), 1.5× at 20-way 1-shot (5 inner steps; about 4 minutes
    to compile), with less memory; about 2.2× on sinusoid regression. Inductor caches the compiled
    code on disk.
    """

    name = "maml"
    Config = MAMLConfig
    test_options = ("test_inner_steps", "test_inner_lr", "norm")

    def __init__(self, config: MAMLConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        self.net, self.regression = build_task_model(config, item_shape)
        self.model = TaskModel(self.net, config.norm)
        self.steps, self.lr, self.test_steps, self.test_lr = paper_schedule(config, self.regression)
        # class_sum: the support items' summed loss over K, N times their mean (MAMLConfig.inner_loss)
        self.support_scale = (config.n_way if config.inner_loss == "class_sum"
                              and not self.regression else 1)
        self.inner_names = inner_parameter_names(self.net, config.inner_params)
        self.inner_rates = None
        if config.meta_sgd:
            self.inner_rates = nn.ParameterDict({
                name.replace(".", "/"): nn.Parameter(torch.full_like(p, self.lr))
                for name, p in self.net.named_parameters() if name in self.inner_names})
        self.episodes_seen = 0

    # ------------------------------------------------------------------ the contract's extras
    @classmethod
    def train_defaults(cls, ways: int | None, shots: int) -> dict:
        """Finn et al.: 5-way unless told, meta-batch 32 (5-way) or 16 (20-way), queries = shots,
        Adam 1e-3 constant; validation on episodes of the training way (the head's outputs)."""
        ways = ways or 5
        return {"ways": ways, "meta_batch": 32 if ways <= 5 else 16, "queries": shots,
                "lr": 1e-3, "schedule": "constant", "episodes": 60000 * (32 if ways <= 5 else 16),
                "val_every": 16000, "val_episodes": 200, "val_ways": ways, "val_shots": shots,
                "log_every": 3200}

    @classmethod
    def config_defaults(cls, train_config) -> dict:
        """The way of the episodes, and Finn et al.'s Omniglot network (strided convolutions)."""
        return {"n_way": train_config.ways, "downsample": "stride"}

    @property
    def adapts_at_test(self) -> bool:
        return True

    @property
    def metric(self) -> str:
        return "mse" if self.regression else "accuracy"

    def episode_scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return (outputs - targets).pow(2).mean(-1)
        return super().episode_scores(outputs, targets)

    def on_step(self, episodes: int) -> None:
        self.episodes_seen = episodes

    # ------------------------------------------------------------------ the algorithm
    def task_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(outputs, targets)
        return F.cross_entropy(outputs, targets)

    def rates(self, test: bool) -> dict[str, torch.Tensor] | float:
        if self.inner_rates is not None:
            return {name.replace("/", "."): rate for name, rate in self.inner_rates.items()}
        return self.test_lr if test else self.lr

    def adapt(self, params, support_x, support_y, steps: int, rates, first_order: bool):
        """``steps`` gradient steps of one task's support loss from ``params`` (inside vmap)."""
        def support_loss(p):
            loss = self.task_loss(self.model(p, support_x), support_y)
            return loss * self.support_scale if self.support_scale != 1 else loss

        return self.descend(params, support_loss, steps, rates, first_order)

    def descend(self, params, objective, steps: int, rates, first_order: bool):
        """``steps`` gradient steps of ``objective(params)`` on the inner parameters
        (``inner_params``); the others pass through unchanged, constants of the inner loop."""
        fixed = {name: p for name, p in params.items() if name not in self.inner_names}
        inner = {name: p for name, p in params.items() if name in self.inner_names}

        def inner_objective(p):
            return objective({**fixed, **p})

        for _ in range(steps):
            inner = sgd_step(inner, grad(inner_objective)(inner), rates, first_order)
        return {**fixed, **inner}

    def adapted_outputs(self, support_x, support_y, query_x, steps: int, rates,
                        first_order: bool) -> torch.Tensor:
        """Query outputs of every task after adapting on its support set: ``[B, Q, ...]``."""
        def task(params, sx, sy, qx):
            return self.model(self.adapt(params, sx, sy, steps, rates, first_order), qx)

        return self.model.map(task, self.model.parameters(), support_x, support_y, query_x)

    def _checked_batch(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       *others: torch.Tensor) -> tuple[bool, tuple[torch.Tensor, ...]]:
        """:meth:`task_batch` with the way checked against the head (classification) or the
        targets in the items' dtype (regression)."""
        batched, (support_x, support_y, *others) = self.task_batch(support_x, support_y, *others)
        if self.regression:
            support_y = support_y.to(support_x.dtype)
        else:
            self.check_way(support_y, self.config.n_way)
        return batched, (support_x, support_y, *others)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        """Adapt on the support set (the test schedule), predict the queries: logits ``[Q, N]`` or
        regression outputs ``[Q]`` (``[B, ...]`` for a batch). Gradients are computed even under
        ``torch.no_grad``; the outer graph is kept only in training mode with grad enabled."""
        batched, (support_x, support_y, query_x) = self._checked_batch(support_x, support_y,
                                                                       query_x)
        test = not self.training
        steps, rates = (self.test_steps, self.rates(True)) if test else (self.steps, self.rates(False))
        outputs = self.adapted_outputs(support_x, support_y, query_x, steps, rates,
                                       first_order=test or self.is_first_order())
        return outputs if batched else outputs[0]

    def is_first_order(self) -> bool:
        return self.config.first_order or self.episodes_seen < self.config.first_order_episodes

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """The meta-objective of a batch of tasks (or one episode) in training: the query loss
        after the training schedule's inner steps, compiled with its gradients when
        :meth:`compile_training` switched that on (and autograd is recording)."""
        _, (support_x, support_y, query_x, query_y) = self._checked_batch(
            episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        targets = query_y.to(support_x.dtype) if self.regression else query_y
        loss, outputs = self.training_objective(support_x, support_y, query_x, targets,
                                                self.steps, self.is_first_order())
        if self.training:
            self.model.update_running(support_x.flatten(0, 1))
        return loss, self.train_metrics(loss, outputs, targets)

    def meta_objective(self, support_x, support_y, query_x, targets, steps: int,
                       first_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query loss, detached outputs)`` of a batch of tasks after ``steps`` inner steps (the
        training rates): a pure function of the inputs and the parameters, which
        :class:`~kshot.nn.functional.CompiledObjective` differentiates and compiles."""
        outputs = self.adapted_outputs(support_x, support_y, query_x, steps, self.rates(False),
                                       first_order)
        return self.query_loss(outputs, targets), outputs.detach()

    def query_loss(self, outputs, targets) -> torch.Tensor:
        """The loss over every query of every task (a batch, or one episode)."""
        if self.regression:
            return self.task_loss(outputs.reshape(-1), targets.reshape(-1))
        return self.task_loss(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    def train_metrics(self, loss, outputs, targets) -> dict[str, float]:
        if self.regression:
            return {"loss": float(loss.detach()), "mse": float(loss.detach())}
        return {"loss": float(loss.detach()), "accuracy": accuracy(outputs, targets)}


@register
class Pretrained(MAML):
    """The MAML paper's baseline: one model trained on all tasks jointly, fine-tuned at test."""

    name = "pretrained"

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = episode.items()  # support and query points of every task: plain training data
        if not episode.batched:
            x, y = x[None], y[None]
        outputs = self.model.map(self.model, self.model.parameters(), x)
        self.model.update_running(x.flatten(0, 1))
        targets = y.to(outputs.dtype) if self.regression else y
        loss = self.query_loss(outputs, targets)
        return loss, self.train_metrics(loss, outputs, targets)

    def compile_training(self, enabled: bool) -> bool:
        return False  # no inner loop in training: nothing for a compiled objective to fuse
