"""Data: archives and folders -> ClassDataset -> EpisodeSampler -> Episode."""

from kshot.data.dataset import ClassDataset
from kshot.data.episodes import Episode, EpisodeSampler

__all__ = ["ClassDataset", "Episode", "EpisodeSampler"]
