"""NTM / LRUA memory addressing (kshot.nn.memory): each stage on hand-made inputs, the
least-recently-used access of the MANN, and gradients through a whole NTM memory step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kshot.errors import KShotError
from kshot.methods.ntm import NTM, NTMConfig
from kshot.nn.memory import (
    HeadProjection,
    address,
    circular_shift,
    clear_least_used,
    content_weights,
    cosine_similarity,
    interpolate,
    least_used,
    lrua_write_weights,
    read,
    sharpen,
    shift_offsets,
    update_usage,
    write,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def one_hot(index: int, n: int = 5) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([index]), n).float()  # [1, n]


def shift_to(offset: int, shift_range: int = 1) -> torch.Tensor:
    """A shift weighting putting all its mass on ``offset``: ``[1, 2R+1]``."""
    return one_hot(shift_offsets(shift_range).index(offset), 2 * shift_range + 1)


# ---------------------------------------------------------------------------- content (5, 6)
MEMORY = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]])  # [1, N=4, M=2]


def test_cosine_similarity_by_hand():
    similarity = cosine_similarity(torch.tensor([[2.0, 0.0]]), MEMORY)
    assert torch.allclose(similarity, torch.tensor([[1.0, 0.0, -1.0, 0.6]]), atol=1e-6)
    # an all-zero row has similarity 0, not NaN
    zero_row = torch.cat([MEMORY, torch.zeros(1, 1, 2)], 1)
    assert cosine_similarity(torch.tensor([[1.0, 0.0]]), zero_row)[0, -1] == 0


def test_content_weights_pick_the_most_similar_row_and_beta_sharpens():
    key = torch.tensor([[0.5, 0.7]])  # nearest (cosine) to row 3 (0.6, 0.8)
    soft = content_weights(key, MEMORY, torch.tensor([1.0]))
    sharp = content_weights(key, MEMORY, torch.tensor([50.0]))
    for weights in (soft, sharp):
        assert weights.shape == (1, 4)
        assert torch.allclose(weights.sum(-1), torch.ones(1))
        assert int(weights.argmax()) == 3
    assert sharp.max() > soft.max() and sharp.max() > 0.9
    # β -> 0: uniform
    assert torch.allclose(content_weights(key, MEMORY, 1e-9), torch.full((1, 4), 0.25))


def test_content_weights_with_heads():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, H=2, M=2]
    weights = content_weights(keys, MEMORY, torch.tensor([[20.0, 20.0]]))
    assert weights.shape == (1, 2, 4)
    assert weights.argmax(-1).tolist() == [[0, 1]]
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2))


# ---------------------------------------------------------------------------- interpolation (7)
def test_interpolation_gate():
    content, previous = one_hot(1), one_hot(3)
    assert torch.equal(interpolate(content, previous, torch.tensor([1.0])), content)
    assert torch.equal(interpolate(content, previous, torch.tensor([0.0])), previous)
    half = interpolate(content, previous, torch.tensor([0.5]))
    assert torch.allclose(half, 0.5 * (content + previous)) and torch.isclose(half.sum(), torch.tensor(1.0))


# ---------------------------------------------------------------------------- shift (8)
def test_shift_moves_a_one_hot_weighting_circularly():
    assert torch.equal(circular_shift(one_hot(1), shift_to(+1)), one_hot(2))
    assert torch.equal(circular_shift(one_hot(4), shift_to(+1)), one_hot(0))  # wraps at the end
    assert torch.equal(circular_shift(one_hot(0), shift_to(-1)), one_hot(4))  # and at the start
    assert torch.equal(circular_shift(one_hot(2), shift_to(0)), one_hot(2))
    # a wider range: +2 and -2 of R = 2
    assert torch.equal(circular_shift(one_hot(4), shift_to(+2, 2)), one_hot(1))
    assert torch.equal(circular_shift(one_hot(1), shift_to(-2, 2)), one_hot(4))


def test_fractional_shift_blurs_and_keeps_the_mass():
    shifted = circular_shift(one_hot(0), torch.tensor([[0.25, 0.5, 0.25]]))
    assert torch.allclose(shifted, torch.tensor([[0.5, 0.25, 0.0, 0.0, 0.25]]))


def test_shift_needs_an_odd_range():
    with pytest.raises(KShotError, match="odd number of offsets"):
        circular_shift(one_hot(0), torch.full((1, 2), 0.5))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), slots=st.integers(1, 9), shift_range=st.integers(0, 3))
def test_shift_equals_a_sum_of_rolls(seed, slots, shift_range):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(2, 3, slots, generator=generator), -1)  # [B, H, N]
    shift = torch.softmax(torch.randn(2, 3, 2 * shift_range + 1, generator=generator), -1)
    expected = sum(shift[..., k, None] * torch.roll(weights, offset, -1)
                   for k, offset in enumerate(shift_offsets(shift_range)))
    shifted = circular_shift(weights, shift)
    assert torch.allclose(shifted, expected, atol=1e-6)
    assert torch.allclose(shifted.sum(-1), torch.ones(2, 3), atol=1e-6)


# ---------------------------------------------------------------------------- sharpening (9)
def test_sharpening():
    weights = torch.tensor([[0.5, 0.3, 0.2]])
    assert torch.allclose(sharpen(weights, torch.tensor([1.0])), weights)
    sharp = sharpen(weights, torch.tensor([2.0]))
    assert torch.allclose(sharp, torch.tensor([[0.25, 0.09, 0.04]]) / 0.38)
    assert sharp.max() > weights.max() and torch.isclose(sharp.sum(), torch.tensor(1.0))
    # a large γ on a flat weighting of many slots does not underflow to an unnormalised one
    flat = torch.softmax(0.1 * torch.randn(2, 128), -1)
    assert torch.allclose(sharpen(flat, torch.tensor([60.0, 60.0])).sum(-1), torch.ones(2))


# ---------------------------------------------------------------------------- read (2), write (3, 4)
HAND_MEMORY = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])  # [1, N=2, M=3]


def test_read_is_the_weighted_sum_of_rows():
    assert torch.allclose(read(HAND_MEMORY, torch.tensor([[0.25, 0.75]])),
                          torch.tensor([[3.25, 4.25, 5.25]]))
    heads = read(HAND_MEMORY, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))  # [1, H=2, M]
    assert torch.equal(heads, HAND_MEMORY)


def test_erase_then_add_by_hand():
    weights = torch.tensor([[0.5, 0.25]])
    erase, add = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[1.0, 1.0, 0.0]])
    # erase: row 0 × (1 - 0.5 e) = [0.5, 2, 2.25], row 1 × (1 - 0.25 e) = [3, 5, 5.25]; then + w a
    expected = torch.tensor([[[1.0, 2.5, 2.25], [3.25, 5.25, 5.25]]])
    assert torch.allclose(write(HAND_MEMORY, weights, erase, add), expected)
    # no erase: add only (the MANN's write)
    assert torch.allclose(write(HAND_MEMORY, weights, None, add),
                          HAND_MEMORY + torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.0]]]))
    # a full erase at a one-hot weighting replaces the row
    replaced = write(HAND_MEMORY, torch.tensor([[0.0, 1.0]]), torch.ones(1, 3),
                     torch.tensor([[7.0, 8.0, 9.0]]))
    assert torch.equal(replaced, torch.tensor([[[1.0, 2.0, 3.0], [7.0, 8.0, 9.0]]]))


def test_several_write_heads_commute():
    generator = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(1, 2, 2, generator=generator), -1)  # [B, H=2, N]
    erase, add = torch.rand(1, 2, 3, generator=generator), torch.randn(1, 2, 3, generator=generator)
    both = write(HAND_MEMORY, weights, erase, add)
    swapped = write(HAND_MEMORY, weights.flip(1), erase.flip(1), add.flip(1))
    assert torch.allclose(both, swapped)
    # the erase of two heads is the product of their erases
    erased = write(write(HAND_MEMORY, weights[:, 0], erase[:, 0], torch.zeros(1, 3)),
                   weights[:, 1], erase[:, 1], torch.zeros(1, 3))
    assert torch.allclose(write(HAND_MEMORY, weights, erase, torch.zeros(1, 2, 3)), erased)


# ---------------------------------------------------------------------------- heads
def test_head_projection_ranges_and_addressing():
    projection = HeadProjection(controller_size=6, heads=2, memory_width=3, shift_range=1,
                                write=True)
    params = projection(torch.randn(4, 6) * 5)
    assert params.key.shape == params.erase.shape == params.add.shape == (4, 2, 3)
    assert params.beta.shape == params.gate.shape == params.gamma.shape == (4, 2)
    assert params.shift.shape == (4, 2, 3)
    assert (params.beta > 0).all() and (params.gamma >= 1).all()
    assert ((params.gate >= 0) & (params.gate <= 1)).all()
    assert ((params.erase >= 0) & (params.erase <= 1)).all()
    assert torch.allclose(params.shift.sum(-1), torch.ones(4, 2))
    reader = HeadProjection(6, 1, 3, 2, write=False)(torch.randn(4, 6))
    assert reader.erase is None and reader.add is None and reader.shift.shape == (4, 1, 5)
    memory = torch.randn(4, 5, 3)
    weights = address(params, memory, torch.full((4, 2, 5), 0.2))
    assert weights.shape == (4, 2, 5) and (weights >= 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(4, 2), atol=1e-6)


# ---------------------------------------------------------------------------- LRUA (Santoro et al.)
def test_least_used_slots_and_ties():
    usage = torch.tensor([[0.3, 0.1, 0.5, 0.1], [0.9, 0.8, 0.0, 0.2]])
    # tie between slots 1 and 3: the lower index wins
    assert least_used(usage, 1).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert least_used(usage, 2).tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]
    assert least_used(torch.zeros(1, 3), 1).tolist() == [[1, 0, 0]]  # all tied at the start
    with pytest.raises(KShotError, match="n <= 4"):
        least_used(usage, 5)


def test_usage_update_and_write_weights_by_hand():
    usage = torch.tensor([[1.0, 2.0]])
    updated = update_usage(usage, torch.tensor([[0.2, 0.8]]), torch.tensor([[0.5, 0.5]]), 0.5)
    assert torch.allclose(updated, torch.tensor([[1.2, 2.3]]))
    # heads are summed: two read heads [B, H, N]
    two_heads = update_usage(usage, torch.tensor([[[0.2, 0.8], [1.0, 0.0]]]),
                             torch.tensor([[0.5, 0.5]]), 0.5)
    assert torch.allclose(two_heads, torch.tensor([[2.2, 2.3]]))
    previous_read, previous_lu = torch.tensor([[0.2, 0.8]]), torch.tensor([[1.0, 0.0]])
    # σ(0) = 0.5: the average; α -> ±∞: the read or the least-used slot
    assert torch.allclose(lrua_write_weights(torch.tensor([0.0]), previous_read, previous_lu),
                          torch.tensor([[0.6, 0.4]]))
    assert torch.allclose(lrua_write_weights(torch.tensor([30.0]), previous_read, previous_lu),
                          previous_read)
    assert torch.allclose(lrua_write_weights(torch.tensor([-30.0]), previous_read, previous_lu),
                          previous_lu)
    per_head = lrua_write_weights(torch.zeros(1, 2), torch.tensor([[[0.2, 0.8], [0.0, 1.0]]]),
                                  previous_lu)
    assert torch.allclose(per_head, torch.tensor([[[0.6, 0.4], [0.5, 0.5]]]))


def test_the_least_used_slot_is_cleared_before_the_write():
    memory = torch.arange(1.0, 10.0).view(1, 3, 3)
    usage = torch.tensor([[0.7, 0.2, 0.4]])
    cleared = clear_least_used(memory, usage)
    assert cleared[0, 1].eq(0).all()
    assert torch.equal(cleared[0, [0, 2]], memory[0, [0, 2]])
    # writing the key to the least-used slot then leaves exactly the key there
    key = torch.tensor([[5.0, -1.0, 2.0]])
    written = write(cleared, least_used(usage), None, key)
    assert torch.equal(written[0, 1], key[0])


# ---------------------------------------------------------------------------- gradients
def tiny_ntm(controller: str = "lstm", memory_init: str = "learned") -> NTM:
    config = NTMConfig(controller=controller, controller_size=5, memory_slots=4, memory_width=3,
                       memory_init=memory_init)
    torch.manual_seed(0)
    return NTM(config, (3,)).double()


def test_gradcheck_through_a_memory_step():
    ntm = tiny_ntm()
    generator = torch.Generator().manual_seed(1)
    start = ntm.initial_state(2)
    state = start._replace(read_weights=torch.softmax(
        torch.randn(2, 1, 4, generator=generator, dtype=torch.float64), -1))
    controller_output = torch.randn(2, 5, generator=generator, dtype=torch.float64,
                                    requires_grad=True)
    memory = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64, requires_grad=True)

    def step(controller_output, memory):
        new = ntm.memory_step(controller_output, state._replace(memory=memory))
        return new.memory, new.reads, new.read_weights, new.write_weights

    assert torch.autograd.gradcheck(step, (controller_output, memory))


@pytest.mark.parametrize("controller, memory_init", [("lstm", "constant"),
                                                     ("feedforward", "learned")])
def test_gradcheck_through_a_short_sequence(controller, memory_init):
    ntm = tiny_ntm(controller, memory_init)
    inputs = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)  # [B, T=3, in]
    assert torch.autograd.gradcheck(lambda x: ntm.sequence(x)[0], (inputs,))


def test_every_parameter_gets_a_gradient():
    ntm = tiny_ntm()
    outputs, _ = ntm.sequence(torch.randn(2, 4, 3, dtype=torch.float64))
    outputs.pow(2).sum().backward()
    for name, parameter in ntm.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
