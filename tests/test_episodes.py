"""kshot.data.episodes: sampler invariants (hypothesis), determinism, batching, errors."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kshot.data.dataset import ClassDataset
from kshot.data.episodes import Episode, EpisodeSampler, episode_seed
from kshot.errors import KShotError

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def traceable_dataset(sizes: list[int], size: int = 2) -> ClassDataset:
    """Classes of the given sizes; every pixel of item ``i`` is ``i`` so episodes can be traced."""
    n_items = sum(sizes)
    assert n_items < 256
    images = torch.arange(n_items, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return ClassDataset.from_labels(images.clone(), labels, name="traceable")


def items_of(x: torch.Tensor) -> torch.Tensor:
    """Dataset item index of every item of a float episode tensor ``[..., 1, S, S]``."""
    return (x[..., 0, 0, 0] * 255).round().long()


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    assert (a.n_way, a.k_shot) == (b.n_way, b.k_shot)
    for f in fields(Episode):
        if f.name.endswith(("_x", "_y")):
            assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


@st.composite
def sampler_cases(draw):
    """A small dataset with unequal class sizes and an (n_way, k_shot, n_query) that fits it."""
    sizes = draw(st.lists(st.integers(0, 8), min_size=1, max_size=10))
    k_shot = draw(st.integers(1, 4))
    n_query = draw(st.integers(0, 4))
    eligible = sum(s >= k_shot + n_query for s in sizes)
    if eligible == 0:  # make one class big enough rather than discard the example
        sizes[draw(st.integers(0, len(sizes) - 1))] = k_shot + n_query
        eligible = 1
    n_way = draw(st.integers(1, eligible))
    seed = draw(st.integers(0, 2**32 - 1))
    index = draw(st.integers(0, 10_000))
    return sizes, n_way, k_shot, n_query, seed, index


# --- invariants of a single episode ------------------------------------------------------------


@PROPERTY_SETTINGS
@given(sampler_cases())
def test_episode_invariants(case) -> None:
    sizes, n_way, k_shot, n_query, seed, index = case
    dataset = traceable_dataset(sizes)
    sampler = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed)
    episode = sampler.episode(index)

    # shapes and dtypes
    assert episode.support_x.shape == (n_way * k_shot, 1, 2, 2)
    assert episode.query_x.shape == (n_way * n_query, 1, 2, 2)
    assert episode.support_x.dtype == episode.query_x.dtype == torch.float32
    assert (episode.n_way, episode.k_shot, episode.n_query) == (n_way, k_shot, n_query)
    assert not episode.batched

    # labels 0..n_way-1, class-major
    assert episode.support_y.tolist() == [c for c in range(n_way) for _ in range(k_shot)]
    assert episode.query_y.tolist() == [c for c in range(n_way) for _ in range(n_query)]

    # the items: distinct, support and query disjoint
    support_items = items_of(episode.support_x)
    query_items = items_of(episode.query_x)
    all_items = torch.cat([support_items, query_items])
    assert len(set(all_items.tolist())) == len(all_items)
    assert not set(support_items.tolist()) & set(query_items.tolist())

    # every item labelled c comes from one dataset class; distinct labels, distinct classes
    true_class = dataset.labels
    chosen = []
    for c in range(n_way):
        classes = set(true_class[support_items[episode.support_y == c]].tolist())
        classes |= set(true_class[query_items[episode.query_y == c]].tolist())
        assert len(classes) == 1
        chosen.append(classes.pop())
    assert len(set(chosen)) == n_way
    # only classes with enough items are chosen
    assert all(sizes[c] >= k_shot + n_query for c in chosen)

    # item_indices agrees with the built episode
    indices = sampler.item_indices(index)
    assert indices.shape == (n_way, k_shot + n_query)
    assert torch.equal(indices[:, :k_shot].reshape(-1), support_items)
    assert torch.equal(indices[:, k_shot:].reshape(-1), query_items)


@PROPERTY_SETTINGS
@given(sampler_cases(), st.lists(st.integers(0, 1000), min_size=1, max_size=5))
def test_batch_equals_stacked_episodes(case, indices) -> None:
    sizes, n_way, k_shot, n_query, seed, _ = case
    sampler = EpisodeSampler(traceable_dataset(sizes), n_way, k_shot, n_query, seed=seed)
    batch = sampler.batch(indices)
    assert batch.batched
    assert batch.support_x.shape == (len(indices), n_way * k_shot, 1, 2, 2)
    assert batch.query_y.shape == (len(indices), n_way * n_query)
    assert_episodes_equal(batch, Episode.stack([sampler.episode(i) for i in indices]))


@PROPERTY_SETTINGS
@given(sampler_cases())
def test_same_seed_gives_identical_episodes(case) -> None:
    sizes, n_way, k_shot, n_query, seed, index = case
    dataset = traceable_dataset(sizes)
    first = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed)
    second = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed)
    second.episode(index + 1)  # drawing other episodes first changes nothing
    assert_episodes_equal(first.episode(index), second.episode(index))


# --- determinism on a dataset with many classes ------------------------------------------------


@pytest.fixture(scope="module")
def many_classes() -> ClassDataset:
    return traceable_dataset([2] * 120)


def test_episodes_differ_across_indices_and_seeds(many_classes: ClassDataset) -> None:
    sampler = EpisodeSampler(many_classes, 5, 1, 1, seed=0)
    other_seed = EpisodeSampler(many_classes, 5, 1, 1, seed=1)
    drawn = {tuple(sampler.item_indices(i).flatten().tolist()) for i in range(20)}
    assert len(drawn) == 20
    for i in range(20):
        assert not torch.equal(sampler.item_indices(i), other_seed.item_indices(i))


def test_episode_seed_is_a_pure_function() -> None:
    assert episode_seed(3, 7) == episode_seed(3, 7)
    seeds = {episode_seed(s, i) for s in range(5) for i in range(50)}
    assert len(seeds) == 250
    assert all(0 <= s < 2**63 for s in seeds)


# --- iteration ---------------------------------------------------------------------------------


def test_iteration_yields_episodes_from_start(many_classes: ClassDataset) -> None:
    sampler = EpisodeSampler(many_classes, 3, 1, 1, seed=4, episodes=5, start=7)
    assert len(sampler) == 5
    episodes = list(sampler)
    assert len(episodes) == 5
    for offset, episode in enumerate(episodes):
        assert_episodes_equal(episode, sampler.episode(7 + offset))
    assert len(list(sampler)) == 5  # iterating again starts over


def test_endless_sampler_has_no_length_but_iterates(many_classes: ClassDataset) -> None:
    sampler = EpisodeSampler(many_classes, 3, 1, 1, seed=4, start=2)
    with pytest.raises(TypeError):
        len(sampler)
    first = list(itertools.islice(sampler, 30))
    assert len(first) == 30
    assert_episodes_equal(first[0], sampler.episode(2))
    assert_episodes_equal(first[-1], sampler.episode(31))


# --- Episode.stack / unbatch -------------------------------------------------------------------


def test_stack_unbatch_round_trip(many_classes: ClassDataset) -> None:
    sampler = EpisodeSampler(many_classes, 4, 1, 1, seed=2)
    episodes = [sampler.episode(i) for i in range(3)]
    stacked = Episode.stack(episodes)
    assert stacked.batched and stacked.n_query == 1
    unbatched = stacked.unbatch()
    assert len(unbatched) == 3
    for original, restored in zip(episodes, unbatched):
        assert not restored.batched
        assert_episodes_equal(original, restored)
    assert_episodes_equal(Episode.stack(unbatched), stacked)
    assert episodes[0].unbatch() == [episodes[0]]


def test_chunks_split_a_batch_in_order(many_classes: ClassDataset) -> None:
    sampler = EpisodeSampler(many_classes, 4, 1, 1, seed=2)
    batch = sampler.batch(range(5))
    chunks = batch.chunks(2)
    assert [chunk.size for chunk in chunks] == [2, 2, 1] and batch.size == 5
    assert all(chunk.batched and (chunk.n_way, chunk.k_shot) == (4, 1) for chunk in chunks)
    assert_episodes_equal(Episode.stack([e for c in chunks for e in c.unbatch()]), batch)
    assert batch.chunks(5) == [batch] and batch.chunks(9) == [batch]
    single = sampler.episode(0)
    assert single.size == 1 and single.chunks(1) == [single]
    with pytest.raises(KShotError, match="at least one episode"):
        batch.chunks(0)


def test_stack_rejects_mixed_shapes(many_classes: ClassDataset) -> None:
    one = EpisodeSampler(many_classes, 4, 1, 1).episode(0)
    other = EpisodeSampler(many_classes, 3, 1, 1).episode(0)
    with pytest.raises(KShotError, match="same way, shot and query"):
        Episode.stack([one, other])


def test_episode_to_device_keeps_content(many_classes: ClassDataset) -> None:
    episode = EpisodeSampler(many_classes, 4, 1, 1).episode(0)
    assert_episodes_equal(episode.to("cpu"), episode)


# --- bad input ---------------------------------------------------------------------------------


def test_n_way_larger_than_classes_names_ways() -> None:
    dataset = traceable_dataset([3, 3, 3])
    with pytest.raises(KShotError, match=r"n_way=4 .* 3 classes.*--ways 3"):
        EpisodeSampler(dataset, 4, 1, 1)


def test_too_many_items_per_class_names_shots_or_queries() -> None:
    dataset = traceable_dataset([3, 5, 2])
    with pytest.raises(KShotError,
                       match=r"k_shot \+ n_query = 6 .*largest has 5.*--shots or --queries"):
        EpisodeSampler(dataset, 1, 1, 5)
    # enough classes in the dataset, but too few of them big enough
    with pytest.raises(KShotError, match=r"only 1 classes have 4.*--shots or --queries"):
        EpisodeSampler(dataset, 2, 2, 2)


@pytest.mark.parametrize(
    ("n_way", "k_shot", "n_query", "name"),
    [(0, 1, 1, "n_way"), (2, 0, 1, "k_shot"), (2, 1, -1, "n_query"), (2.0, 1, 1, "n_way"),
     (2, "1", 1, "k_shot")],
)
def test_non_positive_or_non_integer_sizes_raise(n_way, k_shot, n_query, name) -> None:
    with pytest.raises(KShotError, match=rf"{name} must be an integer >= \d"):
        EpisodeSampler(traceable_dataset([4, 4, 4]), n_way, k_shot, n_query)


def test_n_way_zero_message_names_ways_option() -> None:
    with pytest.raises(KShotError, match="--ways"):
        EpisodeSampler(traceable_dataset([4, 4, 4]), 0, 1, 1)


def test_zero_queries_allowed() -> None:
    episode = EpisodeSampler(traceable_dataset([2, 2]), 2, 2, 0).episode(0)
    assert episode.query_x.shape == (0, 1, 2, 2) and episode.n_query == 0


@PROPERTY_SETTINGS
@given(case=sampler_cases())
def test_shuffled_episode_holds_the_same_items_with_their_labels(case) -> None:
    """shuffle=True permutes the support and the query items of episode i (labels follow their
    items); which items make up episode i does not change."""
    sizes, n_way, k_shot, n_query, seed, index = case
    dataset = traceable_dataset(sizes)
    plain = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed).episode(index)
    shuffled = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed,
                              shuffle=True).episode(index)
    for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
        pairs = sorted(zip(items_of(getattr(plain, x)).tolist(), getattr(plain, y).tolist(),
                           strict=True))
        shuffled_pairs = sorted(zip(items_of(getattr(shuffled, x)).tolist(),
                                    getattr(shuffled, y).tolist(), strict=True))
        assert pairs == shuffled_pairs


def test_shuffle_is_seeded_and_breaks_class_order(many_classes: ClassDataset) -> None:
    sampler = EpisodeSampler(many_classes, 10, 1, 1, seed=4, shuffle=True)
    assert_episodes_equal(sampler.episode(7), sampler.episode(7))
    assert_episodes_equal(sampler.batch([7, 8]).unbatch()[1], sampler.episode(8))
    labels = torch.stack([sampler.episode(i).support_y for i in range(20)])
    assert not (labels == labels[0]).all()  # the order differs from episode to episode
    sorted_count = sum(bool((y[1:] >= y[:-1]).all()) for y in labels)
    assert sorted_count < 3  # not class-sorted (10 items: sorted by chance ~1 in 100 000)
    assert sampler.with_shuffle() is sampler
    plain = sampler.with_shuffle(False)
    assert not plain.shuffle and sampler.shuffle
    assert bool((plain.episode(0).support_y.diff() >= 0).all())
