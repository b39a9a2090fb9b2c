"""The learner contract every method follows, and the registry of methods by name.

A learner is an ``nn.Module`` with

* ``forward(support_x, support_y, query_x) -> logits [Q, N]`` (or ``[B, Q, N]`` for a batch of
  episodes stacked along a leading dimension), and
* ``loss(episode) -> (loss, metrics)``: cross-entropy of those logits unless the method says
  otherwise; ``metrics`` holds plain floats (``loss``, ``accuracy``) for logging.

Each method lives in one file with its config dataclass; ``Config`` fields carry the paper's
defaults and build both the CLI options and the checkpoint metadata.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kshot.data.episodes import Episode
from kshot.errors import KShotError


class Learner(nn.Module):
    """Base class: holds the config and the item shape; subclasses implement ``forward``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    test_options: ClassVar[tuple[str, ...]] = ()
    """Config fields that only change how a trained model is scored (``kshot eval --set``)."""

    def __init__(self, config: Any, item_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.config = config
        self.item_shape = tuple(int(s) for s in item_shape)

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(episode.support_x, episode.support_y, episode.query_x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), episode.query_y.reshape(-1))
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy(logits, episode.query_y)}

    @property
    def order_sensitive(self) -> bool:
        """Whether the order of the support items can change a prediction (a method that reads the
        set as a sequence). The Trainer and the evaluator give such a learner episodes whose items
        are shuffled by a seeded draw, so it cannot learn labels from positions."""
        return False

    @classmethod
    def train_defaults(cls, ways: int | None, shots: int) -> dict[str, Any]:
        """TrainConfig values this method trains with unless told otherwise (the paper's settings
        for episodes of ``ways`` × ``shots``; ``ways`` None when not given); ``kshot train``
        applies them."""
        return {}

    @classmethod
    def config_defaults(cls, train_config: Any) -> dict[str, Any]:
        """Config values that follow from the training episodes (a head of ``ways`` outputs);
        ``kshot train`` applies them unless the options are given."""
        return {}

    @property
    def adapts_at_test(self) -> bool:
        """Whether the learner takes gradient steps on the support set when it predicts (MAML, the
        LSTM meta-learner): the evaluator then runs it with autograd on, instead of under
        ``torch.inference_mode``."""
        return False

    @property
    def metric(self) -> str:
        """The name of what :meth:`episode_scores` measures (``accuracy``, ``mse``)."""
        return "accuracy"

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger :attr:`metric` is better (the Trainer keeps the best checkpoint)."""
        return self.metric not in LOWER_IS_BETTER

    def episode_scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The metric of each episode of a batch: ``outputs [B, Q, ...]`` of ``forward`` and the
        query targets ``[B, Q]`` -> ``[B]`` (accuracy unless the learner says otherwise)."""
        return episode_accuracies(outputs, targets)

    def on_step(self, episodes: int) -> None:
        """Called by the Trainer before each optimiser step with the episodes trained so far
        (a schedule inside the method, such as MAML's first-order warm-up, reads it)."""

    @property
    def trainable(self) -> bool:
        """Whether there is anything for the Trainer to optimise."""
        return any(p.requires_grad for p in self.parameters())

    def embed_episode(self, support_x: torch.Tensor, support_y: torch.Tensor,
                      query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Support and query embeddings of one episode or a batch, in one ``self.backbone`` pass.

        Returns ``support_emb [B, S, D]``, ``query_emb [B, Q, D]``, ``support_y [B, S]`` (a single
        episode gets ``B = 1``) and ``n_way``.
        """
        _, (support_x, support_y, query_x) = self.task_batch(support_x, support_y, query_x)
        n_batch, n_support = support_y.shape
        embeddings = self.backbone(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))
        support_emb = embeddings[: n_batch * n_support].view(n_batch, n_support, -1)
        query_emb = embeddings[n_batch * n_support :].view(n_batch, query_x.shape[1], -1)
        return support_emb, query_emb, support_y, int(support_y.max()) + 1

    def task_batch(self, support_x: torch.Tensor, support_y: torch.Tensor,
                   *others: torch.Tensor) -> tuple[bool, tuple[torch.Tensor, ...]]:
        """Whether an episode came batched (``support_y`` of shape ``[B, S]``), and its tensors
        ``(support_x, support_y, *others)`` with a leading task dimension (``B = 1`` for a single
        episode), after checking the support items' shape."""
        batched = support_y.ndim == 2
        self.check_items(support_x, batched)
        tensors = (support_x, support_y, *others)
        return batched, tensors if batched else tuple(t[None] for t in tensors)

    def check_way(self, support_y: torch.Tensor, n_way: int, part: str = "head") -> None:
        """Reject an episode (or batch) whose way differs from the ``n_way`` outputs of a fixed
        output layer (MAML's and the LSTM meta-learner's head, Meta Networks' base learner)."""
        got = int(support_y.max()) + 1
        if got != n_way:
            raise KShotError(f"this {self.name} model's {part} has {n_way} outputs; score it on "
                             f"{n_way}-way episodes (got {got}-way)")

    def check_items(self, items: torch.Tensor, batched: bool) -> None:
        shape = tuple(items.shape[2:] if batched else items.shape[1:])
        if shape != self.item_shape:
            raise KShotError(f"{self.name} was built for items of shape {self.item_shape}, got "
                             f"{shape}; resize the images to the run's image size")


LOWER_IS_BETTER = ("mse", "loss", "bits_per_sequence")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of queries whose arg-max logit is the true label."""
    return float((logits.argmax(-1) == labels).float().mean())


def episode_accuracies(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of each episode of a batch: ``logits [B, Q, N]``, ``labels [B, Q]`` -> ``[B]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)


def config_from_dict(config_type: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys with a clear message."""
    names = {f.name for f in fields(config_type)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise KShotError(f"unknown option(s) {unknown} for {config_type.__name__}; known: "
                         f"{sorted(names)}")
    converted = {}
    for f in fields(config_type):
        if f.name in values:
            value = values[f.name]
            converted[f.name] = tuple(value) if isinstance(value, list) else value
    return config_type(**converted)


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


METHODS: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    """Class decorator: make a learner available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Learner]:
    import kshot.methods  # noqa: F401  (registers every method)

    if name not in METHODS:
        raise KShotError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def build_learner(name: str, config: dict[str, Any] | Any, item_shape: tuple[int, ...]) -> Learner:
    """A learner by method name, from its config (a dataclass or a dict of its fields)."""
    cls = get_method(name)
    if isinstance(config, dict):
        config = config_from_dict(cls.Config, config)
    return cls(config, item_shape)
