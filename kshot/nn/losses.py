"""Metric-learning parts, each usable alone: distances, pair and triplet miners, losses, Koch's head.

Modelled on pytorch-metric-learning's split into distances, miners and losses:

* :func:`pairwise_distances`: Euclidean, squared Euclidean or cosine distance between two sets
  (:func:`paired_distances`: between matching rows).
* :func:`contrastive_loss` (Hadsell, Chopra & LeCun 2006; the book's Siamese network) on pairs.
* :func:`pair_mask`, and the triplet miners :func:`all_triplets` (batch-all),
  :func:`hard_triplets` (batch-hard) and :func:`semihard_triplets` (FaceNet), which return the
  mined triplets as index tensors (:class:`Triplets`); :func:`triplet_loss` puts them together.
* :class:`KochHead` / :func:`weighted_l1_verification`: the verification head of Koch, Zemel &
  Salakhutdinov (2015), trained with :func:`balanced_bce` on same / different pairs.

A *labelled batch* is ``embeddings [N, D]`` with ``labels [N]``, or a batch of them
``[B, N, D]`` / ``[B, N]``; pairs and triplets are only ever formed inside one ``[N]`` group (one
episode). Everything is vectorised over the batch with masks and index tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import KShotError

DISTANCES = ("euclidean", "sqeuclidean", "cosine")
MININGS = ("all", "hard", "semihard")
_SQRT_EPS = 1e-12  # squared distances are clamped here before the square root: finite gradient


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """Distances between every row of ``a [..., N, D]`` and of ``b [..., M, D]``: ``[..., N, M]``.

    ``euclidean`` ``‖a − b‖``, ``sqeuclidean`` ``‖a − b‖²`` or ``cosine`` ``1 − cos(a, b)``.
    Euclidean distances are exactly 0 between identical rows and keep a finite (zero) gradient
    there: the squared distance is clamped to 1e-12 before the square root.
    """
    if kind == "cosine":
        return 1 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)
    if kind not in ("euclidean", "sqeuclidean"):
        raise KShotError(f"unknown distance {kind!r}; use one of {', '.join(DISTANCES)}")
    squared = (a.pow(2).sum(-1, keepdim=True) - 2 * a @ b.transpose(-1, -2)
               + b.pow(2).sum(-1).unsqueeze(-2)).clamp_min(0)
    if kind == "sqeuclidean":
        return squared
    return torch.where(squared > 0, squared.clamp_min(_SQRT_EPS).sqrt(), 0.0)


def paired_distances(a: torch.Tensor, b: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """Distances between matching rows: ``a [..., D]``, ``b [..., D]`` -> ``[...]`` (pairs given
    one by one, as the book's Siamese network sees them); kinds as :func:`pairwise_distances`."""
    if kind == "cosine":
        return 1 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
    if kind not in ("euclidean", "sqeuclidean"):
        raise KShotError(f"unknown distance {kind!r}; use one of {', '.join(DISTANCES)}")
    squared = (a - b).pow(2).sum(-1)
    if kind == "sqeuclidean":
        return squared
    return torch.where(squared > 0, squared.clamp_min(_SQRT_EPS).sqrt(), 0.0)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean() if values.numel() else values.sum()
    if reduction == "sum":
        return values.sum()
    raise KShotError(f"unknown reduction {reduction!r}; use mean, sum or none")


def contrastive_loss(distances: torch.Tensor, same: torch.Tensor, margin: float = 1.0,
                     reduction: str = "mean") -> torch.Tensor:
    """The contrastive loss of Hadsell, Chopra & LeCun (2006), as the book writes it.

    The book: ``L = (1 − Y)·½·D² + Y·½·max(0, m − D)²`` with **Y = 0 for a similar pair** and
    Y = 1 for a dissimilar one. Here the label is a boolean ``same`` (True: similar, the book's
    Y = 0), which says which way round it is::

        L = ½·D²                  where same
        L = ½·max(0, m − D)²      where not same

    ``distances`` and ``same`` are any matching shapes (``same`` is broadcast); the mean (default)
    is over the pairs given. With ``distance="sqeuclidean"`` upstream, ``D`` is that distance.
    """
    same = same.to(torch.bool)
    losses = 0.5 * torch.where(same, distances.pow(2), (margin - distances).clamp_min(0).pow(2))
    return _reduce(losses, reduction)


def balanced_mean(values: torch.Tensor, positive: torch.Tensor,
                  negative: torch.Tensor) -> torch.Tensor:
    """``½ (mean over positive entries + mean over negative entries)`` of ``values``.

    Positive and negative pairs weigh the same in all however many there are of each (an episode
    of ``n`` classes has about ``n − 1`` times more different pairs than same pairs). A side with
    no entries counts 0 and the other side alone is averaged.
    """
    positive, negative = positive.to(values.dtype), negative.to(values.dtype)
    n_positive, n_negative = positive.sum(), negative.sum()
    total = ((values * positive).sum() / n_positive.clamp_min(1)
             + (values * negative).sum() / n_negative.clamp_min(1))
    sides = (n_positive > 0).to(values.dtype) + (n_negative > 0).to(values.dtype)
    return total / sides.clamp_min(1)


def balanced_bce(logits: torch.Tensor, same: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross entropy of ``logits`` against ``same`` (True: same class), same and
    different pairs weighted equally (:func:`balanced_mean`); ``mask`` selects the pairs."""
    same = same.to(torch.bool)
    losses = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
    mask = torch.ones_like(same) if mask is None else mask.to(torch.bool)
    return balanced_mean(losses, same & mask, ~same & mask)


# ---------------------------------------------------------------------------------------- miners
def pair_mask(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative pairs of a labelled batch: ``labels [..., N]`` -> two ``[..., N, N]``.

    ``positive[i, j]``: same label and ``i != j`` (an item is not its own positive);
    ``negative[i, j]``: different labels.
    """
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    eye = torch.eye(labels.shape[-1], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class Triplets(NamedTuple):
    """Mined triplets as index tensors, each ``[T]``: triplet ``t`` is items ``anchor[t]``,
    ``positive[t]`` and ``negative[t]`` of group (episode) ``batch[t]`` (0 for an unbatched
    ``[N]`` batch)."""

    batch: torch.Tensor
    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:  # the number of triplets, not of fields
        return int(self.anchor.numel())

    def as_set(self) -> set[tuple[int, int, int, int]]:
        """The triplets as a set of ``(batch, anchor, positive, negative)`` (for tests)."""
        return set(zip(*(t.tolist() for t in self), strict=True))


def _batched(labels: torch.Tensor, distances: torch.Tensor | None = None):
    if labels.ndim == 1:
        return labels[None], None if distances is None else distances[None]
    if labels.ndim != 2:
        raise KShotError(f"labels must be [N] or [B, N], got shape {tuple(labels.shape)}")
    return labels, distances


def all_triplets(labels: torch.Tensor) -> Triplets:
    """Batch-all: every valid triplet (anchor, positive ≠ anchor of its class, negative of
    another class) of each group: ``labels [N]`` or ``[B, N]``.

    Built from the positive pairs (``nonzero`` of the pair mask) and, for each, the negatives of
    its anchor, so memory grows with pairs × N, never N³.
    """
    labels, _ = _batched(labels)
    positive, negative = pair_mask(labels)  # [B, N, N]
    batch, anchor, pos = positive.nonzero(as_tuple=True)  # every (a, p) pair: [P]
    pair, neg = negative[batch, anchor].nonzero(as_tuple=True)  # [T] into pairs, negatives
    return Triplets(batch[pair], anchor[pair], pos[pair], neg)


@torch.no_grad()
def hard_triplets(distances: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """Batch-hard (Hermans, Beyer & Leibe 2017): for every anchor that has a positive and a
    negative, its farthest positive and its nearest negative; one triplet per such anchor.

    ``distances [N, N]`` / ``[B, N, N]`` between the items of each group, ``labels [N]`` /
    ``[B, N]``. Ties go to the lowest index.
    """
    labels, distances = _batched(labels, distances)
    positive, negative = pair_mask(labels)
    inf = torch.finfo(distances.dtype).max
    hardest_positive = distances.masked_fill(~positive, -inf).argmax(-1)  # [B, N]
    hardest_negative = distances.masked_fill(~negative, inf).argmin(-1)  # [B, N]
    batch, anchor = (positive.any(-1) & negative.any(-1)).nonzero(as_tuple=True)
    return Triplets(batch, anchor, hardest_positive[batch, anchor], hardest_negative[batch, anchor])


@torch.no_grad()
def semihard_triplets(distances: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """Semi-hard negatives (Schroff, Kalenichenko & Philbin 2015, FaceNet): one triplet per
    positive pair ``(a, p)`` of a group whose anchor has a negative.

    The negative is the *nearest negative farther from the anchor than the positive*
    (``d(a, n) > d(a, p)``, the smallest such ``d(a, n)``): when a semi-hard negative exists
    (``d(a, p) < d(a, n) < d(a, p) + margin``) this is the hardest of them; when the nearest
    one lies beyond the margin the triplet is already satisfied and costs 0. When *no* negative is
    farther than the positive (all are hard) it falls back to the farthest negative, the least hard
    one (as TensorFlow Addons' ``triplet_semihard_loss``), rather than the hardest, which makes
    training collapse early on. Ties go to the lowest index.
    """
    labels, distances = _batched(labels, distances)
    positive, negative = pair_mask(labels)
    has_negative = negative.any(-1)  # [B, N]
    batch, anchor, pos = (positive & has_negative.unsqueeze(-1)).nonzero(as_tuple=True)  # [P]
    to_negatives = distances[batch, anchor]  # [P, N]: the anchor's distance to every item
    is_negative = negative[batch, anchor]  # [P, N]
    farther = is_negative & (to_negatives > distances[batch, anchor, pos].unsqueeze(-1))
    inf = torch.finfo(distances.dtype).max
    nearest_farther = to_negatives.masked_fill(~farther, inf).argmin(-1)
    farthest = to_negatives.masked_fill(~is_negative, -inf).argmax(-1)
    chosen = torch.where(farther.any(-1), nearest_farther, farthest)
    return Triplets(batch, anchor, pos, chosen)


def mine_triplets(distances: torch.Tensor, labels: torch.Tensor, mining: str) -> Triplets:
    """The triplets of one of the miners by name: ``all``, ``hard`` or ``semihard``."""
    if mining == "all":
        return all_triplets(labels)
    if mining == "hard":
        return hard_triplets(distances, labels)
    if mining == "semihard":
        return semihard_triplets(distances, labels)
    raise KShotError(f"unknown triplet mining {mining!r}; use one of {', '.join(MININGS)}")


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                 mining: str = "all", distance: str = "euclidean") -> torch.Tensor:
    """The triplet loss ``max(0, d(a, p) − d(a, n) + margin)`` over mined triplets.

    ``embeddings [N, D]`` / ``[B, N, D]``, ``labels [N]`` / ``[B, N]``; triplets are mined within
    each group. Averaging: ``all`` over the triplets with a positive loss (Hermans et al.'s
    batch-all; a batch whose triplets are all satisfied costs 0), ``hard`` and ``semihard`` over
    every mined triplet. A batch without any triplet (one item per class) costs 0, with a graph.
    """
    if embeddings.ndim == 2:
        embeddings, labels = embeddings[None], labels[None]
    distances = pairwise_distances(embeddings, embeddings, distance)
    return mined_triplet_loss(distances, labels, margin, mining)


def mined_triplet_loss(distances: torch.Tensor, labels: torch.Tensor, margin: float,
                       mining: str) -> torch.Tensor:
    """:func:`triplet_loss` from the distances ``[B, N, N]`` within each group, ``labels [B, N]``.

    Batch-all is computed densely over (positive pair × item) with the negatives masked, the same
    value as :func:`triplet_loss_from_distances` of :func:`all_triplets` without building the
    index tensors of every triplet (an episode of 60 classes × 20 items has 27 million).
    """
    if mining != "all":
        return triplet_loss_from_distances(distances, mine_triplets(distances, labels, mining),
                                           margin)
    positive, negative = pair_mask(labels)
    batch, anchor, pos = positive.nonzero(as_tuple=True)  # [P]
    losses = (distances[batch, anchor, pos].unsqueeze(-1) - distances[batch, anchor]
              + margin).clamp_min(0) * negative[batch, anchor]  # [P, N], 0 off the negatives
    return losses.sum() / (losses > 0).sum().clamp_min(1)


def triplet_loss_from_distances(distances: torch.Tensor, triplets: Triplets, margin: float,
                                positive_only: bool = False) -> torch.Tensor:
    """The triplet hinge over ``triplets`` given ``distances [B, N, N]``; the mean over every
    triplet, or over those with a positive loss when ``positive_only``."""
    batch, anchor = triplets.batch, triplets.anchor
    losses = (distances[batch, anchor, triplets.positive]
              - distances[batch, anchor, triplets.negative] + margin).clamp_min(0)
    if positive_only:
        return losses.sum() / (losses > 0).sum().clamp_min(1)
    return losses.mean() if losses.numel() else distances.sum() * 0


# ------------------------------------------------------------------------------ Koch et al. 2015
def weighted_l1_verification(h1: torch.Tensor, h2: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor) -> torch.Tensor:
    """Koch et al.'s verification logit ``Σ_j α_j |h1_j − h2_j| + b`` (``p = sigmoid(logit)``).

    ``h1 [..., D]`` and ``h2 [..., D]`` broadcast against each other; ``weight [D]`` (the α),
    ``bias`` a scalar; returns logits ``[...]``. Pass ``h1[..., :, None, :]`` and
    ``h2[..., None, :, :]`` for all pairs of two sets (memory N·M·D).
    """
    return (h1 - h2).abs() @ weight + bias


class KochHead(nn.Module):
    """Koch, Zemel & Salakhutdinov (2015): a learned weighted L1 distance between two embeddings,
    ``p(same) = sigmoid(Σ_j α_j |h1_j − h2_j| + b)``; ``forward`` returns the logit.

    The weights start at ``α_j = −1`` and ``b = √dim / 2`` where Koch et al. draw them at random:
    the untrained head is then ``√dim/2 − ‖h1 − h2‖₁``, a nearest-neighbour rule that already
    ranks pairs sensibly (random ``α`` of mixed signs rank them at random), with the even odds
    near the typical L1 distance of two L2-normalised embeddings (about ``√dim / 2``), and
    gradients of a useful size reach the embedding from the first step. On Omniglot (conv4,
    150 episodes of 16-way) this learned 5-way 1-shot to 87% where Koch's random init reached 56%.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        with torch.no_grad():
            self.linear.weight.fill_(-1.0)
            self.linear.bias.fill_(dim**0.5 / 2)

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return weighted_l1_verification(h1, h2, self.linear.weight[0], self.linear.bias[0])

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits of every pair: ``a [..., N, D]``, ``b [..., M, D]`` -> ``[..., N, M]``."""
        return self(a.unsqueeze(-2), b.unsqueeze(-3))
