"""Episodes: N-way K-shot tasks drawn from a ClassDataset.

An episode draws ``n_way`` classes, then ``k_shot + n_query`` distinct items of each; the first
``k_shot`` are the support set, the rest the queries. Labels are ``0..n_way-1`` in the order the
classes were drawn. Episode ``i`` of a sampler with seed ``s`` is a pure function of ``(s, i)``, so
every method is scored on the same evaluation episodes, and a resumed training run sees exactly the
episodes it would have seen without the interruption.

By default support and query items come in class order (items of label 0 first). A method that
reads a set as a sequence (Matching Networks' bi-LSTM, a memory-augmented net) could learn labels
from positions; ``shuffle=True`` permutes the support items and the query items of each episode
(with their labels) by a seeded draw made after the items are chosen, so a shuffled episode ``i``
holds exactly the items of the unshuffled episode ``i``, in another order: order-invariant methods
score the same on both, and every method is still scored on the same episodes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from kshot.config import check_count
from kshot.data.dataset import ClassDataset
from kshot.errors import KShotError


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task, or a batch of them stacked along a leading dimension.

    ``support_x [N*K, C, H, W]`` (float, class-major: items of class 0 first), ``support_y [N*K]``,
    ``query_x [N*Q, C, H, W]``, ``query_y [N*Q]``; batched: ``[B, N*K, ...]`` and so on.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    n_way: int
    k_shot: int

    @property
    def n_query(self) -> int:
        return self.query_y.shape[-1] // self.n_way

    @property
    def batched(self) -> bool:
        return self.support_y.ndim == 2

    @property
    def size(self) -> int:
        """Episodes in the batch (1 when not batched)."""
        return self.support_y.shape[0] if self.batched else 1

    def chunks(self, size: int) -> list[Episode]:
        """The batch as consecutive batches of at most ``size`` episodes (itself when it has no
        more, or is not batched)."""
        if size < 1:
            raise KShotError(f"chunks of at least one episode, got {size}")
        if not self.batched or self.size <= size:
            return [self]
        tensors = (self.support_x, self.support_y, self.query_x, self.query_y)
        return [Episode(*part, self.n_way, self.k_shot)
                for part in zip(*(t.split(size) for t in tensors))]

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Support and query items together with their labels, for losses over a labelled batch
        (pairs, triplets: an episode is a batch of ``n_way`` classes × ``k_shot + n_query`` items):
        ``x [S+Q, ...]``, ``y [S+Q]``, or ``[B, S+Q, ...]`` batched."""
        dim = 1 if self.batched else 0
        return (torch.cat([self.support_x, self.query_x], dim),
                torch.cat([self.support_y, self.query_y], dim))

    def to(self, device: torch.device | str) -> Episode:
        return Episode(self.support_x.to(device), self.support_y.to(device),
                       self.query_x.to(device), self.query_y.to(device), self.n_way, self.k_shot)

    @staticmethod
    def stack(episodes: Sequence[Episode]) -> Episode:
        """Stack episodes of the same shape into one batched episode."""
        first = episodes[0]
        if any((e.n_way, e.k_shot, e.query_y.shape) != (first.n_way, first.k_shot, first.query_y.shape)
               for e in episodes):
            raise KShotError("only episodes of the same way, shot and query count can be stacked")
        tensors = {f.name: torch.stack([getattr(e, f.name) for e in episodes])
                   for f in fields(Episode) if f.name.endswith(("_x", "_y"))}
        return Episode(n_way=first.n_way, k_shot=first.k_shot, **tensors)

    def unbatch(self) -> list[Episode]:
        if not self.batched:
            return [self]
        return [Episode(self.support_x[b], self.support_y[b], self.query_x[b], self.query_y[b],
                        self.n_way, self.k_shot) for b in range(self.support_y.shape[0])]


def episode_seed(seed: int, index: int) -> int:
    """The RNG seed of episode ``index`` of a sampler seeded ``seed`` (well mixed, 63 bits)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class EpisodeSampler:
    """Draws N-way K-shot episodes from ``dataset``; episode ``i`` depends only on ``(seed, i)``.

    Iterating yields ``episodes`` episodes (indices ``start .. start+episodes-1``), or never stops
    when ``episodes`` is ``None``. ``batch(indices)`` builds a stacked batch of episodes at once.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        n_way: int,
        k_shot: int,
        n_query: int,
        seed: int = 0,
        episodes: int | None = None,
        start: int = 0,
        shuffle: bool = False,
    ) -> None:
        for name, option, value, low in (("n_way", "--ways", n_way, 1),
                                         ("k_shot", "--shots", k_shot, 1),
                                         ("n_query", "--queries", n_query, 0)):
            check_count(name, value, option, low)
        per_class = k_shot + n_query
        eligible = torch.nonzero(dataset.sizes >= per_class).flatten()
        if len(eligible) < n_way:
            if dataset.n_classes < n_way:
                raise KShotError(
                    f"n_way={n_way} is larger than the {dataset.n_classes} classes of {dataset.name}; "
                    f"use --ways {dataset.n_classes} or fewer"
                )
            raise KShotError(
                f"k_shot + n_query = {per_class} is larger than the images per class of "
                f"{dataset.name} (only {len(eligible)} classes have {per_class}, the largest has "
                f"{int(dataset.sizes.max())}); lower --shots or --queries"
            )
        self.dataset = dataset
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.seed, self.episodes, self.start = int(seed), episodes, int(start)
        self.shuffle = bool(shuffle)
        self._eligible = eligible
        self._max_size = int(dataset.sizes[eligible].max())
        # [eligible, max_size]: True where a class has no item at that position
        self._padding = torch.arange(self._max_size) >= dataset.sizes[eligible].unsqueeze(1)

    def __len__(self) -> int:
        if self.episodes is None:
            raise TypeError("an endless sampler has no length")
        return self.episodes

    def __iter__(self) -> Iterator[Episode]:
        index = self.start
        while self.episodes is None or index < self.start + self.episodes:
            yield self.episode(index)
            index += 1

    def item_indices(self, index: int) -> torch.Tensor:
        """Dataset item indices of episode ``index``: ``int64 [n_way, k_shot + n_query]``."""
        return self._draw(index)[0]

    def with_shuffle(self, shuffle: bool = True) -> EpisodeSampler:
        """The same episodes, with (or without) the seeded shuffle of item order."""
        if shuffle == self.shuffle:
            return self
        other = copy.copy(self)
        other.shuffle = bool(shuffle)
        return other

    def _draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Items ``[n_way, k_shot + n_query]`` of episode ``index``, and (when shuffling) the
        permutations of its ``n_way*k_shot`` support and ``n_way*n_query`` query positions."""
        generator = torch.Generator().manual_seed(episode_seed(self.seed, index))
        chosen = self._eligible[torch.randperm(len(self._eligible), generator=generator)[: self.n_way]]
        # a random order of each chosen class's items; padding positions sort last
        keys = torch.rand(self.n_way, self._max_size, generator=generator)
        keys.masked_fill_(self._padding[torch.searchsorted(self._eligible, chosen)], 2.0)
        positions = keys.argsort(dim=1)[:, : self.k_shot + self.n_query]
        items = self.dataset.offsets[chosen].unsqueeze(1) + positions
        if not self.shuffle:  # drawn after the items: shuffling never changes which items
            return items, None, None
        return (items, torch.randperm(self.n_way * self.k_shot, generator=generator),
                torch.randperm(self.n_way * self.n_query, generator=generator))

    def episode(self, index: int) -> Episode:
        return self._build([self._draw(index)], batched=False)

    def batch(self, indices: Sequence[int]) -> Episode:
        """Episodes ``indices`` stacked into one batched Episode (one gather, one float conversion)."""
        return self._build([self._draw(i) for i in indices], batched=True)

    def _build(self, draws: list, batched: bool) -> Episode:
        items = torch.stack([draw[0] for draw in draws])  # [B, n_way, k_shot + n_query]
        n_batch = items.shape[0]
        support_items = items[:, :, : self.k_shot].reshape(n_batch, -1)
        query_items = items[:, :, self.k_shot :].reshape(n_batch, -1)
        labels = torch.arange(self.n_way)
        support_y = labels.repeat_interleave(self.k_shot).expand(n_batch, -1)
        query_y = labels.repeat_interleave(self.n_query).expand(n_batch, -1)
        if self.shuffle:
            support_order = torch.stack([draw[1] for draw in draws])
            query_order = torch.stack([draw[2] for draw in draws])
            support_items, support_y = support_items.gather(1, support_order), support_order // self.k_shot
            query_items = query_items.gather(1, query_order)
            query_y = query_order // max(self.n_query, 1)
        to_float = self.dataset.to_float
        support_x = to_float(self.dataset.images[support_items])
        query_x = to_float(self.dataset.images[query_items])
        if not batched:
            return Episode(support_x[0], support_y[0].clone(), query_x[0], query_y[0].clone(),
                           self.n_way, self.k_shot)
        return Episode(support_x, support_y.clone(), query_x, query_y.clone(), self.n_way, self.k_shot)
