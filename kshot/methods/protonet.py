"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean of its support embeddings (its prototype); a query is
classified by a softmax over negative squared Euclidean distances to the prototypes. Training and
test way/shot may differ (Snell et al. train 60-way and test 5- or 20-way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kshot.config import AT_LEAST_ONE, POSITIVE, check_choice, check_ranges
from kshot.methods.base import Learner, register
from kshot.nn.backbones import build_backbone

DISTANCES = ("sqeuclidean", "euclidean", "cosine")


@dataclass
class ProtoNetConfig:
    backbone: str = "conv4"
    """Embedding network (conv4, lenet, pixels)."""
    hidden: int = 64
    """Channels of each conv4 block."""
    distance: str = "sqeuclidean"
    """sqeuclidean (the paper), euclidean (easyfsl's choice) or cosine."""
    temperature: float = 1.0
    """Logits are -distance / temperature (cosine: similarity / temperature)."""

    def __post_init__(self) -> None:
        check_ranges(self, hidden=AT_LEAST_ONE, temperature=POSITIVE)
        check_choice(self, "distance", DISTANCES)


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean embedding per class: ``embeddings [B, S, D]``, ``labels [B, S]`` -> ``[B, n_way, D]``."""
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # [B, S, N]
    counts = one_hot.sum(1).clamp_min(1).unsqueeze(-1)  # [B, N, 1]
    return one_hot.transpose(1, 2) @ embeddings / counts


def squared_distances(queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``||q - p||²`` for ``queries [B, Q, D]``, ``prototypes [B, N, D]`` -> ``[B, Q, N]``."""
    cross = queries @ prototypes.transpose(1, 2)
    return (queries.pow(2).sum(-1, keepdim=True) - 2 * cross
            + prototypes.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)


@register
class ProtoNet(Learner):
    name = "protonet"
    Config = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        options = {"hidden": config.hidden} if config.backbone == "conv4" else {}
        self.backbone = build_backbone(config.backbone, item_shape, **options)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        batched = support_y.ndim == 2
        support_emb, query_emb, support_y, n_way = self.embed_episode(support_x, support_y, query_x)
        prototypes = class_means(support_emb, support_y, n_way)
        if self.config.distance == "cosine":
            logits = F.normalize(query_emb, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        elif self.config.distance == "euclidean":
            # the square root's gradient is infinite at 0: keep it finite for a query on a prototype
            logits = -squared_distances(query_emb, prototypes).clamp_min(1e-12).sqrt()
        else:
            logits = -squared_distances(query_emb, prototypes)
        logits = logits / self.config.temperature
        return logits if batched else logits[0]
