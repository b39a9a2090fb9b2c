"""Memory addressing of the Neural Turing Machine (Graves, Wayne & Danihelka 2014, section 3) and
the least-recently-used access of the memory-augmented network (Santoro et al. 2016, section 3.2),
written once and shared by :mod:`kshot.methods.ntm` and the MANN.

Everything is batched over sequences: a memory is ``[B, N, M]`` (``N`` slots of width ``M``), a
weighting over the slots is ``[B, N]`` for one head or ``[B, H, N]`` for ``H`` heads, and a
per-head scalar (β, g, γ, α) is ``[B]`` or ``[B, H]``, i.e. the weighting's shape without its last
dimension. The functions are pure tensor functions (differentiable end to end, no state); the
small modules map a controller output to the head parameters.

The NTM addresses a head in four stages (Graves et al. figure 2)::

    key, β ──(5, 6) content──► w^c ──(7) interpolate with w_{t-1} by g──► w^g
        ──(8) circular shift by s──► w̃ ──(9) sharpen by γ──► w_t

then reads ``r = Σ w(i) M(i)`` (2) or writes by erasing then adding (3, 4). Equation numbers
below are the papers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import KShotError

EPS = 1e-8  # keeps the cosine similarity and the normalisations finite on an all-zero row


# ---------------------------------------------------------------------------- shape helpers
def _with_heads(tensor: torch.Tensor, single: bool) -> torch.Tensor:
    """``[B, X]`` -> ``[B, 1, X]`` when the caller gave one head (``single``)."""
    return tensor.unsqueeze(1) if single else tensor


def _per_head(scalar: torch.Tensor | float, weights: torch.Tensor) -> torch.Tensor:
    """A per-head scalar (``[B]``, ``[B, H]``, a trailing 1 allowed, or a float) as a tensor that
    broadcasts against ``weights [..., N]``: ``[..., 1]``."""
    scalar = torch.as_tensor(scalar, dtype=weights.dtype, device=weights.device)
    if scalar.ndim == weights.ndim - 1:
        scalar = scalar.unsqueeze(-1)
    return scalar


# ---------------------------------------------------------------------------- NTM addressing
def cosine_similarity(key: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of a key with every memory row, Graves et al. eq. (6):

        K[u, v] = u · v / (‖u‖ ‖v‖)

    ``key [B, M]`` or ``[B, H, M]``, ``memory [B, N, M]`` -> ``[B, N]`` or ``[B, H, N]``
    (``EPS`` in the denominator: an all-zero row or key has similarity 0).
    """
    single = key.ndim == 2
    key = _with_heads(key, single)  # [B, H, M]
    dots = key @ memory.transpose(1, 2)  # [B, H, N]
    norms = key.norm(dim=-1, keepdim=True) * memory.norm(dim=-1).unsqueeze(1)  # [B, H, N]
    similarity = dots / (norms + EPS)
    return similarity.squeeze(1) if single else similarity


def content_weights(key: torch.Tensor, memory: torch.Tensor,
                    beta: torch.Tensor | float) -> torch.Tensor:
    """Focusing by content, Graves et al. eq. (5):

        w^c(i) = exp(β K[k, M(i)]) / Σ_j exp(β K[k, M(j)])

    ``key [B, M]`` or ``[B, H, M]``, ``memory [B, N, M]``, key strength ``beta > 0`` per head
    (``[B]`` / ``[B, H]``) -> ``[B, N]`` / ``[B, H, N]``, summing to 1 over ``N``. A larger β
    concentrates the weighting on the most similar rows; β -> 0 makes it uniform.
    """
    similarity = cosine_similarity(key, memory)
    return torch.softmax(_per_head(beta, similarity) * similarity, dim=-1)


def interpolate(content: torch.Tensor, previous: torch.Tensor,
                gate: torch.Tensor | float) -> torch.Tensor:
    """Location by interpolation, Graves et al. eq. (7):

        w^g = g w^c + (1 - g) w_{t-1}

    ``content``, ``previous`` ``[B, N]`` / ``[B, H, N]``, interpolation gate ``g ∈ [0, 1]`` per
    head: ``g = 1`` keeps the content weighting, ``g = 0`` the previous one.
    """
    gate = _per_head(gate, content)
    return gate * content + (1 - gate) * previous


def shift_offsets(shift_range: int) -> list[int]:
    """The offsets ``-R .. R`` of a shift weighting of ``2R + 1`` entries, in its order."""
    return list(range(-shift_range, shift_range + 1))


def circular_shift(weights: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotation by circular convolution, Graves et al. eq. (8):

        w̃(i) = Σ_j w^g(j) s(i - j)      (indices modulo N)

    ``weights [B, N]`` / ``[B, H, N]``, ``shift [B, 2R+1]`` / ``[B, H, 2R+1]``: a distribution over
    the offsets ``-R .. R`` (entry ``k`` is offset ``k - R``, :func:`shift_offsets`), so the default
    ``R = 1`` is (-1, 0, +1). Offset ``+1`` moves the weight of slot ``i`` to slot ``i + 1`` and the
    last slot's to slot 0. One gather over a ``[N, 2R+1]`` index table, no loop over slots.
    """
    n_slots, n_offsets = weights.shape[-1], shift.shape[-1]
    if n_offsets % 2 != 1:
        raise KShotError(f"a shift weighting needs an odd number of offsets (-R .. R), got "
                         f"{n_offsets}")
    radius = n_offsets // 2
    offsets = torch.arange(-radius, radius + 1, device=weights.device)  # [2R+1]
    source = (torch.arange(n_slots, device=weights.device)[:, None] - offsets) % n_slots  # [N, 2R+1]
    gathered = weights[..., source]  # [..., N, 2R+1]: w^g(i - offset)
    return (gathered * shift.unsqueeze(-2)).sum(-1)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """Sharpening, Graves et al. eq. (9):

        w(i) = w̃(i)^γ / Σ_j w̃(j)^γ

    ``weights [B, N]`` / ``[B, H, N]``, ``γ ≥ 1`` per head: undoes the blur of a fractional shift;
    ``γ = 1`` leaves a normalised weighting as it is. Computed as ``(w̃ / max w̃)^γ`` normalised
    (the same value): the largest entry is 1, so a large γ cannot underflow the whole weighting.
    """
    scaled = weights / weights.amax(-1, keepdim=True).clamp_min(EPS)  # [..., N], max 1
    powered = scaled.pow(_per_head(gamma, weights))
    return powered / powered.sum(-1, keepdim=True)


def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reading, Graves et al. eq. (2): ``r = Σ_i w(i) M(i)``.

    ``memory [B, N, M]``, ``weights [B, N]`` / ``[B, H, N]`` -> ``[B, M]`` / ``[B, H, M]``.
    """
    single = weights.ndim == 2
    reads = _with_heads(weights, single) @ memory  # [B, H, M]
    return reads.squeeze(1) if single else reads


def write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor | None,
          add: torch.Tensor) -> torch.Tensor:
    """Writing, Graves et al. eqs. (3) erase and (4) add:

        M̃(i) = M_{t-1}(i) ⊙ [1 - w(i) e]          i.e.  M̃ = M ⊙ (1 - w eᵀ)
        M_t(i) = M̃(i) + w(i) a                      i.e.  M_t = M̃ + w aᵀ

    ``memory [B, N, M]``, ``weights [B, N]`` / ``[B, H, N]``, erase vector ``e ∈ [0, 1]`` and add
    vector ``a`` ``[B, M]`` / ``[B, H, M]`` -> the new memory ``[B, N, M]``. Several write heads
    erase with the product of their ``(1 - w eᵀ)`` and add the sum of their ``w aᵀ`` (the paper:
    multiplication commutes, so the order of the heads does not matter). ``erase=None`` only adds
    (the MANN's write, Santoro et al. eq. (7)).
    """
    single = weights.ndim == 2
    weights = _with_heads(weights, single)  # [B, H, N]
    add = _with_heads(add, single)  # [B, H, M]
    if erase is not None:
        erase = _with_heads(erase, single)
        keep = (1 - weights.unsqueeze(-1) * erase.unsqueeze(-2)).prod(1)  # [B, N, M]
        memory = memory * keep
    return memory + weights.transpose(1, 2) @ add  # Σ_h w_h a_hᵀ: [B, N, M]


# ---------------------------------------------------------------------------- heads
@dataclass
class HeadParams:
    """What a controller emits for ``H`` heads of one kind, each ``[B, H, ...]``:

    ``key [B, H, M]``, strength ``beta [B, H]`` (> 0, softplus), interpolation gate ``gate [B, H]``
    (∈ [0, 1], sigmoid), ``shift [B, H, 2R+1]`` (softmax over the offsets ``-R .. R``),
    ``gamma [B, H]`` (≥ 1, one plus softplus); a write head also has ``erase [B, H, M]``
    (∈ [0, 1], sigmoid) and ``add [B, H, M]`` (as emitted), a read head ``None`` for both.
    """

    key: torch.Tensor
    beta: torch.Tensor
    gate: torch.Tensor
    shift: torch.Tensor
    gamma: torch.Tensor
    erase: torch.Tensor | None = None
    add: torch.Tensor | None = None


def head_sizes(memory_width: int, shift_range: int, write: bool) -> list[int]:
    """Sizes of the raw pieces of one head's parameters, in :class:`HeadParams` order: key,
    β, g, shift, γ, then erase and add for a write head."""
    sizes = [memory_width, 1, 1, 2 * shift_range + 1, 1]
    return sizes + [memory_width, memory_width] if write else sizes


def split_head_params(raw: torch.Tensor, memory_width: int, shift_range: int,
                      write: bool) -> HeadParams:
    """``raw [B, H, P]`` (``P = sum(head_sizes(...))``) -> :class:`HeadParams`, each piece put in
    its range: β = softplus, g = sigmoid, s = softmax, γ = 1 + softplus, e = sigmoid."""
    pieces = raw.split(head_sizes(memory_width, shift_range, write), dim=-1)
    key, beta, gate, shift, gamma = pieces[:5]
    erase, add = (torch.sigmoid(pieces[5]), pieces[6]) if write else (None, None)
    return HeadParams(key=key, beta=F.softplus(beta.squeeze(-1)),
                      gate=torch.sigmoid(gate.squeeze(-1)), shift=torch.softmax(shift, dim=-1),
                      gamma=1 + F.softplus(gamma.squeeze(-1)), erase=erase, add=add)


def address(params: HeadParams, memory: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The whole addressing of Graves et al. section 3.3: content (5, 6), interpolation (7),
    shift (8), sharpening (9). ``memory [B, N, M]``, ``previous [B, H, N]`` -> ``[B, H, N]``."""
    content = content_weights(params.key, memory, params.beta)
    gated = interpolate(content, previous, params.gate)
    return sharpen(circular_shift(gated, params.shift), params.gamma)


class HeadProjection(nn.Module):
    """A linear map from the controller output ``[B, C]`` to the parameters of ``heads`` heads of
    one kind (read or write), :class:`HeadParams` with ``H = heads``."""

    def __init__(self, controller_size: int, heads: int, memory_width: int, shift_range: int,
                 write: bool) -> None:
        super().__init__()
        self.heads, self.memory_width, self.shift_range, self.write = (
            heads, memory_width, shift_range, write)
        self.per_head = sum(head_sizes(memory_width, shift_range, write))
        self.linear = nn.Linear(controller_size, heads * self.per_head)

    def forward(self, controller_output: torch.Tensor) -> HeadParams:
        raw = self.linear(controller_output).view(-1, self.heads, self.per_head)  # [B, H, P]
        return split_head_params(raw, self.memory_width, self.shift_range, self.write)


# ---------------------------------------------------------------------------- LRUA (MANN)
def least_used(usage: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Least-used weights, Santoro et al. eq. (5):

        w^lu(i) = 1 if w^u(i) ≤ m(w^u, n), else 0      (m(v, n): the n-th smallest entry of v)

    ``usage [B, N]`` -> ``[B, N]``, 1 on the ``n`` least-used slots (``n``: the number of read
    heads in the paper), 0 elsewhere. Ties: exactly ``n`` slots are marked, the lower slot index
    first among equal usages (the paper's ``≤`` would mark every slot tied with the n-th smallest,
    e.g. all of them at the start, when usage is all zero), so ``w^lu`` always sums to ``n``.
    """
    if not 1 <= n <= usage.shape[-1]:
        raise KShotError(f"least_used needs 1 <= n <= {usage.shape[-1]} slots, got n={n}")
    order = torch.sort(usage, dim=-1, stable=True).indices[..., :n]  # [B, n]
    return torch.zeros_like(usage).scatter(-1, order, 1.0)


def update_usage(usage: torch.Tensor, read_weights: torch.Tensor, write_weights: torch.Tensor,
                 decay: float | torch.Tensor) -> torch.Tensor:
    """Usage update, Santoro et al. eq. (4):

        w^u_t = γ w^u_{t-1} + w^r_t + w^w_t

    ``usage [B, N]``, ``read_weights`` and ``write_weights`` ``[B, N]`` or ``[B, H, N]`` (heads
    summed), decay ``γ`` (a float or ``[B]``) -> ``[B, N]``.
    """
    reads = read_weights.sum(1) if read_weights.ndim == 3 else read_weights
    writes = write_weights.sum(1) if write_weights.ndim == 3 else write_weights
    return _per_head(decay, usage) * usage + reads + writes


def lrua_write_weights(alpha: torch.Tensor | float, previous_read: torch.Tensor,
                       previous_least_used: torch.Tensor) -> torch.Tensor:
    """Write weights of least-recently-used access, Santoro et al. eq. (6):

        w^w_t = σ(α) w^r_{t-1} + (1 - σ(α)) w^lu_{t-1}

    a learned gate between the slots read last step and the least-used ones. ``alpha`` (the raw
    gate, before the sigmoid) per head ``[B]`` / ``[B, H]``, ``previous_read [B, N]`` /
    ``[B, H, N]``, ``previous_least_used [B, N]`` (shared by the heads) -> like ``previous_read``.
    """
    gate = torch.sigmoid(_per_head(alpha, previous_read))
    if previous_read.ndim == 3 and previous_least_used.ndim == 2:
        previous_least_used = previous_least_used.unsqueeze(1)
    return gate * previous_read + (1 - gate) * previous_least_used


def clear_least_used(memory: torch.Tensor, usage: torch.Tensor) -> torch.Tensor:
    """Santoro et al. section 3.2: "prior to writing to memory, the least used memory location is
    computed from w^u_{t-1} and is set to zero". ``memory [B, N, M]``, ``usage [B, N]`` (the
    previous step's) -> the memory with the one least-used row (ties: lowest index, as
    :func:`least_used`) zeroed."""
    return memory * (1 - least_used(usage, 1)).unsqueeze(-1)
