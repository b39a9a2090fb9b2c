"""k-nearest neighbours: the non-parametric one-shot baseline (the book's chapter 1).

A query takes the majority label of its ``k`` nearest support items, on raw pixels or on the
embedding of a trained run (``embedding_run``: the backbone of that run, frozen). Ties between
classes go to the class with the nearer neighbour. Logits are log vote shares (plus the tie-break, under
0.1%), so ``softmax(logits)`` is the share of the ``k`` votes each class got.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kshot.config import AT_LEAST_ONE, check_choice, check_ranges
from kshot.errors import KShotError
from kshot.methods.base import Learner, register
from kshot.nn.backbones import build_backbone


@dataclass
class KNNConfig:
    k: int = 1
    """Neighbours that vote (clipped to the support size)."""
    metric: str = "euclidean"
    """euclidean or cosine."""
    backbone: str = "pixels"
    """Feature space: pixels, or the backbone named by the embedding run."""
    embedding_run: str = ""
    """Run directory whose trained backbone embeds the items (empty: use ``backbone``)."""
    hidden: int = 64
    """Channels of a conv4 backbone (taken from the embedding run when there is one)."""

    def __post_init__(self) -> None:
        check_ranges(self, k=AT_LEAST_ONE, hidden=AT_LEAST_ONE)
        check_choice(self, "metric", ("euclidean", "cosine"))


@register
class KNN(Learner):
    name = "knn"
    Config = KNNConfig

    def __init__(self, config: KNNConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        if config.embedding_run:
            from kshot.checkpoint import load_run_backbone

            self.backbone = load_run_backbone(config.embedding_run, item_shape)
        else:
            options = {"hidden": config.hidden} if config.backbone == "conv4" else {}
            self.backbone = build_backbone(config.backbone, item_shape, **options)
        self.backbone.requires_grad_(False)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        batched = support_y.ndim == 2
        support_emb, query_emb, support_y, n_way = self.embed_episode(support_x, support_y, query_x)
        if self.config.metric == "cosine":
            distances = 1 - F.normalize(query_emb, dim=-1) @ F.normalize(support_emb, dim=-1).mT
        else:
            distances = torch.cdist(query_emb, support_emb)  # [B, Q, S]
        k = min(self.config.k, support_emb.shape[1])
        nearest = distances.topk(k, dim=-1, largest=False).indices  # [B, Q, k], nearest first
        neighbour_labels = torch.gather(support_y.unsqueeze(1).expand(-1, query_emb.shape[1], -1),
                                        2, nearest)
        # votes per class, and the rank of each class's nearest neighbour (k where it has none)
        shape = (*nearest.shape[:2], n_way)
        votes = torch.zeros(shape, dtype=distances.dtype, device=distances.device)
        votes.scatter_add_(2, neighbour_labels, torch.ones_like(neighbour_labels, dtype=votes.dtype))
        ranks = torch.arange(k, device=distances.device).expand_as(nearest)
        nearest_rank = torch.full(shape, k, dtype=torch.long, device=distances.device)
        nearest_rank.scatter_reduce_(2, neighbour_labels, ranks, reduce="amin")
        # log vote shares, plus a tie-break far below one vote for the class with the nearer
        # neighbour; its steps (1e-3 / (k + 1)) stay above float32 resolution for k < 4000
        tie_break = 1e-3 * (k - nearest_rank).to(votes.dtype) / (k + 1)
        logits = torch.log(votes / k + 1e-9) + tie_break
        return logits if batched else logits[0]

    def loss(self, episode):
        raise KShotError("knn has nothing to train; use `kshot train knn` with --episodes 0 "
                         "(it only records its configuration) and evaluate it")
