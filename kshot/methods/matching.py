"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x̂ is labelled by attention over the support set S = {(xᵢ, yᵢ)}:
P(y | x̂, S) = Σᵢ a(x̂, xᵢ) yᵢ with a = softmax over i of the cosine similarity c(f(x̂, S), g(xᵢ, S)).
The embeddings are a shared conv net (Conv4) g' = f', optionally with the paper's *full-context
embeddings* (FCE):

* g(xᵢ, S) = h→ᵢ + h←ᵢ + g'(xᵢ): a bidirectional LSTM over the embedded support set, plus the skip
  connection of the paper;
* f(x̂, S) = attLSTM(f'(x̂), g(S), K): K processing steps of an LSTM that reads over g(S):
  ĥₖ, cₖ = LSTM(f'(x̂), [hₖ₋₁, rₖ₋₁], cₖ₋₁); hₖ = ĥₖ + f'(x̂);
  rₖ = Σᵢ softmax(hₖᵀ g(xᵢ)) g(xᵢ) (dot-product content attention). The read-out rₖ₋₁ enters the
  LSTM beside f'(x̂): an LSTM's gates are linear in the concatenation of its input and recurrent
  state, so this is the same gate arithmetic as the paper's recurrent state [hₖ₋₁, rₖ₋₁].

The loss is the negative log of P(y | x̂, S); :meth:`MatchingNetwork.forward` returns
``log P(y | x̂, S)`` as logits (they are normalised log-probabilities, so cross-entropy on them is
exactly that loss and arg-max is the prediction). Everything runs batched over a meta-batch of
episodes and over all queries at once (the K steps are the only Python loop).

**Order.** Without FCE the prediction is invariant to any permutation of the support set (an
attention sum). With FCE the bi-LSTM reads the support set as a sequence, so g(xᵢ, S) depends on
the order of S and the prediction may change with it (the paper notes the same and leaves it
open). A model trained on class-sorted sets could learn labels from positions, so this learner is
``order_sensitive``: the Trainer and the evaluator give it episodes whose support and query items
are shuffled by a seeded draw (:class:`kshot.data.episodes.EpisodeSampler` ``shuffle``), the same
episodes every other method is scored on.

**Scale.** The paper feeds the cosine similarity (in [-1, 1]) to the softmax as is; with one
example per class that caps the attention's confidence and slows learning. ``scale`` multiplies
the similarities first (``scale=1`` is the paper's form; the default 10 trains faster on the same
budget, the same choice as most reimplementations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import AT_LEAST_ONE, POSITIVE, check_ranges
from kshot.methods.base import Learner, register
from kshot.nn.backbones import build_backbone


@dataclass
class MatchingConfig:
    backbone: str = "conv4"
    """Embedding network g' = f' (conv4, lenet, pixels)."""
    hidden: int = 64
    """Channels of each conv4 block."""
    fce: bool = True
    """Full-context embeddings: bi-LSTM over the support set, attention-LSTM for the queries."""
    processing_steps: int = 5
    """K: steps of the attention-LSTM that reads over the support set (with --fce)."""
    scale: float = 10.0
    """Cosine similarities are multiplied by this before the softmax over the support set (the
    paper: 1)."""

    def __post_init__(self) -> None:
        check_ranges(self, hidden=AT_LEAST_ONE, processing_steps=AT_LEAST_ONE, scale=POSITIVE)


class SupportContext(nn.Module):
    """g(xᵢ, S) = h→ᵢ + h←ᵢ + g'(xᵢ): a bidirectional LSTM over the support sequence, plus a skip."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, support: torch.Tensor) -> torch.Tensor:  # [B, S, D] -> [B, S, D]
        out, _ = self.lstm(support)
        forward, backward = out.chunk(2, dim=-1)
        return forward + backward + support


class QueryContext(nn.Module):
    """f(x̂, S): K steps of an LSTM over f'(x̂) that attends over g(S) (all queries at once)."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)
        self.steps = steps

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        # query [B, Q, D], support g(S) [B, S, D] -> [B, Q, D]
        n_batch, n_query, dim = query.shape
        flat_query = query.reshape(-1, dim)
        h = flat_query
        c = torch.zeros_like(flat_query)
        read = torch.zeros_like(flat_query)
        for _ in range(self.steps):
            h_hat, c = self.cell(torch.cat([flat_query, read], dim=1), (h, c))
            h = h_hat + flat_query
            attention = torch.softmax(h.view(n_batch, n_query, dim) @ support.transpose(1, 2), -1)
            read = (attention @ support).reshape(-1, dim)
        return h.view(n_batch, n_query, dim)


@register
class MatchingNetwork(Learner):
    """Matching Networks: cosine attention over the support set, with full-context embeddings."""

    name = "matching"
    Config = MatchingConfig

    def __init__(self, config: MatchingConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        options = {"hidden": config.hidden} if config.backbone == "conv4" else {}
        self.backbone = build_backbone(config.backbone, item_shape, **options)
        dim = self.backbone.out_dim
        self.support_context = SupportContext(dim) if config.fce else None
        self.query_context = QueryContext(dim, config.processing_steps) if config.fce else None

    @property
    def order_sensitive(self) -> bool:
        """With FCE the bi-LSTM reads the support set in order: episodes come shuffled."""
        return self.config.fce

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        batched = support_y.ndim == 2
        support_emb, query_emb, support_y, n_way = self.embed_episode(support_x, support_y, query_x)
        if self.config.fce:
            support_emb = self.support_context(support_emb)
            query_emb = self.query_context(query_emb, support_emb)
        similarity = F.normalize(query_emb, dim=-1) @ F.normalize(support_emb, dim=-1).transpose(1, 2)
        scores = self.config.scale * similarity  # [B, Q, S]
        # log P(y=c) = logsumexp over the support items of class c - logsumexp over all of them
        class_mask = F.one_hot(support_y, n_way).to(scores.dtype).log()  # [B, S, N]: 0 or -inf
        class_scores = torch.logsumexp(scores.unsqueeze(-1) + class_mask.unsqueeze(1), dim=2)
        log_probs = class_scores - torch.logsumexp(scores, dim=-1, keepdim=True)
        return log_probs if batched else log_probs[0]
