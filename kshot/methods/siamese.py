"""Siamese networks: one embedding net applied to every item, trained on pairs or triplets.

Three losses over the labelled batch an episode is (``n_way`` classes × ``k_shot + n_query``
items, :meth:`Episode.items`), all from :mod:`kshot.nn.losses`:

* ``contrastive`` (Hadsell, Chopra & LeCun 2006; the book's chapter 2): every same-class pair and
  every different-class pair of the episode, the two kinds weighted equally (an episode has about
  ``n_way − 1`` times more different pairs than same pairs);
* ``triplet`` (Schroff et al. 2015, FaceNet; Hermans et al. 2017): triplets mined within each
  episode, ``all`` (batch-all), ``hard`` (batch-hard) or ``semihard``;
* ``koch`` (Koch, Zemel & Salakhutdinov 2015): a learned weighted L1 verification head
  ``sigmoid(Σ α_j |h1_j − h2_j| + b)``, binary cross entropy on every same / different pair,
  the two kinds weighted equally.

A query is classified by its nearest support item: the logit of a class is the best score of its
support items (minus the distance, or Koch's verification logit), the one-shot rule of both papers.

Defaults: the triplet loss with semi-hard mining on L2-normalised embeddings, Euclidean distance,
margin 0.2 (FaceNet's). Trained for 150 episodes of 16 classes × 4 images on Omniglot (conv4,
28 px, one CPU thread, about 17 s), then scored 5-way 1-shot on unseen characters, the triplet
loss learned fastest (semihard 90%, hard 92%, all 88%; untrained 55%), ahead of Koch's head (87%)
and the contrastive loss (84%; 70% without normalising).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import AT_LEAST_ONE, NON_NEGATIVE, check_choice, check_ranges
from kshot.data.episodes import Episode
from kshot.methods.base import Learner, accuracy, register
from kshot.nn.backbones import BACKBONES, build_backbone
from kshot.nn.losses import (
    DISTANCES,
    MININGS,
    KochHead,
    balanced_mean,
    contrastive_loss,
    mined_triplet_loss,
    pair_mask,
    pairwise_distances,
)

LOSSES = ("contrastive", "triplet", "koch")
DEFAULT_MARGINS = {"contrastive": 1.0, "triplet": 0.2, "koch": 0.0}
"""What ``margin = 0`` stands for: Hadsell et al.'s and the book's 1.0, FaceNet's 0.2."""
EMBEDDING_BACKBONES = ("lenet", "booknet")
"""Backbones whose last layer is a linear embedding: ``embedding_dim`` sets its width."""


@dataclass
class SiameseConfig:
    backbone: str = "conv4"
    """Embedding network (conv4, lenet, booknet, pixels)."""
    hidden: int = 64
    """Channels of each conv4 block."""
    loss: str = "triplet"
    """contrastive (Hadsell et al., the book), triplet (FaceNet) or koch (Koch et al. 2015)."""
    mining: str = "semihard"
    """Triplets mined in each episode: all (batch-all), hard (batch-hard) or semihard (FaceNet)."""
    margin: float = 0.0
    """Margin of the contrastive / triplet loss; 0: the usual one (contrastive 1.0, triplet 0.2)."""
    distance: str = "euclidean"
    """euclidean, sqeuclidean or cosine (contrastive and triplet losses, and classifying)."""
    normalize: bool = True
    """L2-normalise the embeddings (FaceNet; Euclidean distances then lie in [0, 2])."""
    embedding_dim: int = 0
    """Embedding size; 0: the backbone's output as it is (booknet 2, lenet 128), else a linear
    projection to it (the width of the last layer of lenet / booknet)."""

    def __post_init__(self) -> None:
        check_ranges(self, hidden=AT_LEAST_ONE, margin=NON_NEGATIVE, embedding_dim=NON_NEGATIVE)
        check_choice(self, "backbone", tuple(BACKBONES))
        check_choice(self, "loss", LOSSES)
        check_choice(self, "mining", MININGS)
        check_choice(self, "distance", DISTANCES)

    @property
    def effective_margin(self) -> float:
        return self.margin or DEFAULT_MARGINS[self.loss]


class L2Normalize(nn.Module):
    """Rows scaled to unit Euclidean length."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=-1)


def class_scores(pair_scores: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """The best score of each class's support items: ``pair_scores [B, Q, S]`` (higher: more
    alike), ``support_y [B, S]`` -> ``[B, Q, n_way]`` (a class without support items gets -inf)."""
    n_batch, n_query, _ = pair_scores.shape
    labels = support_y.unsqueeze(1).expand(-1, n_query, -1)
    out = pair_scores.new_full((n_batch, n_query, n_way), float("-inf"))
    return out.scatter_reduce(2, labels, pair_scores, reduce="amax", include_self=False)


@register
class Siamese(Learner):
    name = "siamese"
    Config = SiameseConfig

    def __init__(self, config: SiameseConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        options: dict[str, int] = {}
        if config.backbone == "conv4":
            options["hidden"] = config.hidden
        if config.backbone in EMBEDDING_BACKBONES and config.embedding_dim:
            options["embedding_dim"] = config.embedding_dim
        base = build_backbone(config.backbone, item_shape, **options)
        layers: list[nn.Module] = [base]
        dim = base.out_dim
        if config.embedding_dim and config.backbone not in EMBEDDING_BACKBONES:
            layers.append(nn.Linear(dim, config.embedding_dim))
            dim = config.embedding_dim
        if config.normalize:
            layers.append(L2Normalize())
        self.backbone = nn.Sequential(*layers)
        self.out_dim = dim
        self.head = KochHead(dim) if config.loss == "koch" else None

    def pair_scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """How alike each row of ``a [B, N, D]`` is to each of ``b [B, M, D]``: ``[B, N, M]``,
        higher is more alike (Koch's verification logit, or minus the distance)."""
        if self.head is not None:
            return self.head.pairwise(a, b)
        return -pairwise_distances(a, b, self.config.distance)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        batched = support_y.ndim == 2
        support_emb, query_emb, support_y, n_way = self.embed_episode(support_x, support_y, query_x)
        logits = class_scores(self.pair_scores(query_emb, support_emb), support_y, n_way)
        return logits if batched else logits[0]

    def embed_items(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, N, D]`` and labels ``[B, N]`` of all items of an episode (or a batch
        of them) in one backbone pass; support items first, as :meth:`Episode.items` puts them."""
        items, labels = episode.items()
        if not episode.batched:
            items, labels = items[None], labels[None]
        self.check_items(items, batched=True)
        embeddings = self.backbone(items.flatten(0, 1))
        return embeddings.view(*labels.shape, -1), labels

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        embeddings, labels = self.embed_items(episode)
        config = self.config
        if config.loss == "koch":
            scores = self.head.pairwise(embeddings, embeddings)  # [B, N, N] logits
            positive, negative = pair_mask(labels)
            bce = F.binary_cross_entropy_with_logits(scores, positive.to(scores.dtype),
                                                     reduction="none")
            loss = balanced_mean(bce, positive, negative)
        else:
            distances = pairwise_distances(embeddings, embeddings, config.distance)  # [B, N, N]
            scores = -distances
            if config.loss == "contrastive":
                positive, negative = pair_mask(labels)
                pair_losses = contrastive_loss(distances, positive, config.effective_margin,
                                               reduction="none")
                loss = balanced_mean(pair_losses, positive, negative)
            else:
                loss = mined_triplet_loss(distances, labels, config.effective_margin,
                                          config.mining)
        # the episode's accuracy as forward scores it: queries against the support items
        n_support = episode.support_y.shape[-1]
        support_y = labels[:, :n_support]
        with torch.no_grad():
            logits = class_scores(scores[:, n_support:, :n_support], support_y, episode.n_way)
        return loss, {"loss": float(loss.detach()),
                      "accuracy": accuracy(logits, labels[:, n_support:])}
