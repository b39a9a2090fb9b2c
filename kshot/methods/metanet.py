"""Meta Networks (Munkhdalai & Yu, ICML 2017): fast weights generated from loss gradients.

Four networks, as the paper's section 3 and the book's chapter 3 lay them out (θ = {W, Q, Z, G}
are the slow weights, trained by Adam on the query loss only)::

    u(Q, Q*, x)   the embedding (dynamic representation learning) function     self.embedding
    d(G, {∇ₜ})    an LSTM that turns gradients of u into task-level fast Q*    self.task_generator
    b(W, W*, x)   the base learner, the classifier of the episode              self.base
    m(Z, ∇ᵢ)      an MLP that turns gradients of b into example-level fast W*  self.example_generator

The paper's Algorithm 1, step by step, in :meth:`MetaNet.forward`, for every episode of a batch at
once:

1. *Meta information for u* (lines 1-5): T rounds of pairs of support items (x'ᵢ, x'ⱼ), each with
   its auxiliary label lᵢⱼ = [y'ᵢ = y'ⱼ]; Lₜ = loss_emb of round t and ∇ₜ = ∇_Q Lₜ.
   ``loss_emb`` is the pair loss of the paper's representation learning: the cross-entropy of
   "same class" with probability σ(``pair_scale`` · cos(u(Q, x'ᵢ), u(Q, x'ⱼ))). Round t pairs
   every support item i with item (i + t) mod N (t = 1 … T, T = min(``embedding_steps``, N - 1)):
   every item is in every round, and over the rounds each item meets T others. This is the
   paper's "sample T pairs" made a pure function of the episode (no random draw inside
   ``forward``: an episode always gets the same prediction); the learner is ``order_sensitive``,
   so the Trainer and the evaluator hand it episodes in a seeded random order, and the pairs
   are random pairs of the episode. In a one-shot episode every pair is of two classes (lᵢⱼ = 0).
2. *Task-level fast weights* (line 6): Q* = d(G, {∇ₜ}ₜ₌₁..T): an LSTM reads the T gradients as a
   sequence, coordinate-wise (every scalar weight of u is one sequence, all of them in one tensor
   operation), and a linear read-out of its last hidden state is that weight's fast twin.
3. *Example-level fast weights and the memory* (lines 7-14): for every support item, the loss
   ``loss_task`` (cross-entropy) of the base learner's slow weights alone, its gradient
   ∇ᵢ = ∇_W loss_task(b(W, x'ᵢ), y'ᵢ) (per-item gradients, vmapped), Wᵢ* = m(Z, ∇ᵢ); the memory
   holds M = [W₁*, …, W_N*] under the keys R = [r'₁, …, r'_N], r'ᵢ = u(Q, Q*, x'ᵢ).
4. *Read by attention* (lines 16-19): for a query x, r = u(Q, Q*, x),
   a = softmax(``scale`` · cos(r, R)) (``scale`` 1 is the paper's), W* = aᵀ M: each query gets
   its own fast weights, a convex combination of the memory's.
5. *Prediction* (line 20): b(W, W*, x): the base learner with the query's fast weights, as logits
   over the episode's ``n_way`` classes; the query cross-entropy trains W, Q, Z and G (line 22).

**Layer augmentation** (section 3.3): every layer of u and of b is a slow layer and a fast layer
on the same input, each followed by the non-linearity, and the two outputs summed:
``relu(x ∗ W) + relu(x ∗ W*)`` (:func:`augmented_layer`). The last layer of each network has no
non-linearity, so its two outputs are simply summed. Both networks are the authors' convolutional
blocks (3×3 convolution without bias, ReLU, max-pool 2; no batch norm, as in the authors' code),
four of them with ``hidden`` filters (Conv4's layout: a 28×28 image becomes a 64-d vector), then
linear layers without bias: u ends in a linear ``hidden`` → ``hidden`` key layer, b in a ReLU
layer ``hidden`` → ``hidden`` and an output layer ``hidden`` → ``n_way``. Every weight of both
networks has a fast twin (there are no biases), so m and d turn every gradient coordinate into one.

**Meta-learners.** m and d are coordinate-wise (one small network shared by all the coordinates of
one layer's weight; one m and one d per layer), as in the authors' code: m is 2 → ``meta_hidden``
→ ``meta_hidden`` → 1 with ReLUs, d an LSTM of ``meta_hidden`` units and a linear read-out. Their
input is the gradient preprocessed as in Andrychowicz et al. (log-magnitude and sign, p = 7 as in
the authors' code, :func:`kshot.methods.meta_lstm.preprocess`). Their output is multiplied by
He's standard deviation of the layer, sqrt(2 / fan-in), so that an output of order one is a fast
weight of the slow weight's scale (a reparametrisation of our own: without batch norm, unscaled
fast weights of order one blow up a 576-input convolution).

Both are made *odd* functions of the gradient (our departure): m(∇) = σ h(σ∇) with σ = sign(∇),
and d({∇ₜ}) = σ h({σ∇ₜ}) with σ the sign of Σₜ∇ₜ, h being the plain network (so h sees only
non-negative gradients, and a zero gradient gives a zero fast weight). A gradient step, -α∇, is
odd too. Without it, a coordinate-wise generator at initialisation gives nearly every coordinate
of a layer the same sign (its output hardly varies with the tiny gradients of most coordinates);
the inputs of every layer but the first are ReLU outputs (non-negative) and the images are too,
so a fast layer whose weights are all negative outputs relu(negative) = 0 for every input,
passes no gradient, and its generator never learns: measured on the unconstrained version, 2 to 4
of the 11 generators dead at initialisation for each of 5 seeds; none with the odd version. An
odd generator follows the gradient's signs, which are mixed within a layer.

**Gradients as meta information are constants.** ∇ₜ and ∇ᵢ are computed with ``torch.func`` on
detached copies of Q and W inside ``forward`` (at test too: the learner ``adapts_at_test``), and
enter d and m as inputs: the query loss does not differentiate through them (no second
derivatives). The paper's Algorithm 1 updates θ with ∇_θ L_train only, and the authors' code takes
the gradients out of the graph as plain arrays (its preprocessing runs on the CPU) before d and m
read them; doing the same here also keeps the cost at one extra backward pass per gradient.
The slow weights still get the query loss's gradient through their own paths: W through b's slow
layers, Q through the keys (the attention), Z through W*, G through Q* (the keys of the memory and
of the query).

**Batched.** A meta-batch of episodes runs as one computation: ``vmap`` over episodes (u with each
episode's Q*), over support items (the per-item gradients of b) and over queries (b with each
query's W*, a grouped convolution); m and d process every coordinate of every episode in one
tensor operation (chunked over coordinates, and the queries' fast weights over queries, to bound
memory when the evaluator scores 16 episodes at once: chunks change no result). Episodes of a
batch do not interact, so a batch gives the same logits as its episodes one at a time.

Departures from the paper, besides the fast-weight scale and the odd generators: the pairs are the
deterministic rounds of step 1; the query loss is the mean, not the sum, over the queries; u and b
are the four-block Conv4 layout (the authors' code has five blocks at 28×28), with He's
initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vjp, vmap

from kshot.config import AT_LEAST_ONE, POSITIVE, check_ranges
from kshot.data.episodes import Episode
from kshot.errors import KShotError
from kshot.methods.base import Learner, accuracy, register
from kshot.methods.meta_lstm import lstm_cell, preprocess

PREPROCESS_P = 7.0
"""p of the gradient preprocessing (the authors' code: 7)."""
COORDINATE_CHUNK = 1 << 19
"""m and d process at most this many coordinates at once (bounds their activations' memory)."""
QUERY_CHUNK_ELEMENTS = 1 << 23
"""Queries' fast weights are materialised at most this many numbers at once."""
CONV_BLOCKS = 4


@dataclass
class MetaNetConfig:
    n_way: int = 5
    """Outputs of the base learner: the way of the episodes it trains and is tested on
    (``kshot train`` sets it from --ways)."""
    hidden: int = 64
    """Filters of each convolutional block of u and b, and the width of their hidden linear
    layers (the paper: 64)."""
    meta_hidden: int = 20
    """Hidden units of m (both layers) and of d's LSTM (the authors' code: 20)."""
    embedding_steps: int = 5
    """T: rounds of support pairs whose loss gradients d reads as a sequence (at most the support
    items - 1)."""
    pair_scale: float = 5.0
    """The representation loss's probability that a pair is of one class is σ(this · cosine)."""
    scale: float = 1.0
    """Attention over the memory: softmax(this · cosine similarity of the keys) (the paper: 1)."""

    def __post_init__(self) -> None:
        check_ranges(self, n_way=AT_LEAST_ONE, hidden=AT_LEAST_ONE, meta_hidden=AT_LEAST_ONE,
                     embedding_steps=AT_LEAST_ONE, pair_scale=POSITIVE, scale=POSITIVE)


Weights = tuple[torch.Tensor, ...]


def augmented_layer(apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    slow: torch.Tensor, fast: torch.Tensor | None, nonlinear: bool) -> torch.Tensor:
    """Layer augmentation: ``apply(x, slow)`` and ``apply(x, fast)`` on the same input, each through
    the ReLU when ``nonlinear``, summed (``fast`` None: the slow layer alone)."""
    out = apply(x, slow)
    if nonlinear:
        out = F.relu(out)
    if fast is None:
        return out
    fast_out = apply(x, fast)
    return out + (F.relu(fast_out) if nonlinear else fast_out)


def _conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, padding=1)


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ weight.T


class AugmentedNet(nn.Module):
    """Conv blocks (3×3 convolution, ReLU, max-pool 2) then linear layers of ``widths``, no biases,
    every layer augmented by fast weights; the last layer has no non-linearity.

    :meth:`run` is a pure function of the slow ``weights``, the ``fast`` weights (a tuple like
    ``weights``, or None) and the items ``x [n, C, H, W] -> [n, widths[-1]]``.
    """

    def __init__(self, in_channels: int, image_size: int, hidden: int,
                 widths: tuple[int, ...]) -> None:
        super().__init__()
        shapes = []
        channels, size = in_channels, image_size
        for _ in range(CONV_BLOCKS):
            shapes.append((hidden, channels, 3, 3))
            channels, size = hidden, size // 2
        features = hidden * size * size
        for width in widths:
            shapes.append((width, features))
            features = width
        self.weights = nn.ParameterList()
        for shape in shapes:
            weight = torch.empty(shape)
            nn.init.kaiming_normal_(weight, nonlinearity="relu")  # He et al.: no batch norm
            self.weights.append(nn.Parameter(weight))
        # He's standard deviation of each layer: the unit of its fast weights
        self.fast_scales = tuple(math.sqrt(2.0 / math.prod(shape[1:])) for shape in shapes)

    def slow(self, detach: bool = False) -> Weights:
        return tuple(w.detach() if detach else w for w in self.weights)

    def run(self, weights: Sequence[torch.Tensor], fast: Sequence[torch.Tensor] | None,
            x: torch.Tensor) -> torch.Tensor:
        last = len(weights) - 1
        for index, weight in enumerate(weights):
            fast_weight = None if fast is None else fast[index]
            if index < CONV_BLOCKS:
                x = F.max_pool2d(augmented_layer(_conv, x, weight, fast_weight, True), 2)
                if index == CONV_BLOCKS - 1:
                    x = x.flatten(1)
            else:
                x = augmented_layer(_linear, x, weight, fast_weight, index < last)
        return x

    def forward(self, x: torch.Tensor, fast: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        return self.run(self.slow(), fast, x)


def _chunks(total: int, size: int) -> list[slice]:
    """Consecutive slices of ``range(total)`` of at most ``size`` (at least 1) elements."""
    size = max(size, 1)
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def sign_normalised(gradient: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(σ · gradient, σ)`` with σ = sign(``reference``): a generator h applied to σ∇ and multiplied
    by σ is odd in the gradient (negating every gradient negates its output)."""
    sign = torch.sign(reference)
    return gradient * sign, sign


class ExampleWeightGenerator(nn.Module):
    """m(Z, ∇): an MLP h (2 → hidden → hidden → 1, ReLU) on every coordinate's preprocessed
    gradient, made odd: m(∇) = σ h(σ∇), σ = sign(∇); the output has the gradient's shape."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(2, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.readout = nn.Linear(hidden, 1)
        nn.init.zeros_(self.readout.bias)

    def forward(self, gradient: torch.Tensor) -> torch.Tensor:
        flat = gradient.reshape(-1)
        outputs = []
        for part in _chunks(len(flat), COORDINATE_CHUNK):
            gradient_part, sign = sign_normalised(flat[part], flat[part])
            inputs = preprocess(gradient_part, PREPROCESS_P, dim=0)  # [2, n]
            h = F.relu(torch.addmm(self.layer1.bias[:, None], self.layer1.weight, inputs))
            h = F.relu(torch.addmm(self.layer2.bias[:, None], self.layer2.weight, h))
            outputs.append(sign * torch.addmm(self.readout.bias[:, None], self.readout.weight, h)[0])
        return torch.cat(outputs).view_as(gradient)


class TaskWeightGenerator(nn.Module):
    """d(G, {∇ₜ}): an LSTM that reads a sequence of gradients coordinate by coordinate and a linear
    read-out of its last hidden state, h; made odd, d({∇ₜ}) = σ h({σ∇ₜ}) with σ the sign of the
    coordinate's summed gradient Σₜ∇ₜ: ``[T, *shape] -> [*shape]``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(2, hidden)
        self.readout = nn.Linear(hidden, 1)
        nn.init.zeros_(self.readout.bias)

    def forward(self, gradients: torch.Tensor) -> torch.Tensor:
        steps = gradients.shape[0]
        flat = gradients.reshape(steps, -1)
        hidden = self.lstm.hidden_size
        outputs = []
        for part in _chunks(flat.shape[1], COORDINATE_CHUNK):
            sequence, sign = sign_normalised(flat[:, part], flat[:, part].sum(0))
            inputs = preprocess(sequence, PREPROCESS_P, dim=1)  # [T, 2, n]
            h = c = inputs.new_zeros(hidden, inputs.shape[-1])
            for step in range(steps):
                h, c = lstm_cell(self.lstm, inputs[step], h, c)
            outputs.append(sign * torch.addmm(self.readout.bias[:, None], self.readout.weight, h)[0])
        return torch.cat(outputs).view(gradients.shape[1:])


def pair_loss(embeddings: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor,
              pair_scale: float) -> torch.Tensor:
    """loss_emb of one round of pairs: item i with item ``partners[i]``; the mean over the pairs of
    the cross-entropy of lᵢ = [yᵢ = y_partner] with P(same) = σ(pair_scale · cos(eᵢ, e_partner))."""
    similarity = F.cosine_similarity(embeddings, embeddings[partners], dim=-1)
    same = (labels == labels[partners]).to(embeddings.dtype)
    return F.binary_cross_entropy_with_logits(pair_scale * similarity, same)


def attention_read(query_keys: torch.Tensor, memory_keys: torch.Tensor, scale: float) -> torch.Tensor:
    """The attention of each query over the memory: softmax over the memory of ``scale`` × the
    cosine similarity of the keys. ``[..., Q, D]``, ``[..., S, D]`` -> ``[..., Q, S]``."""
    similarity = F.normalize(query_keys, dim=-1) @ F.normalize(memory_keys, dim=-1).transpose(-1, -2)
    return torch.softmax(scale * similarity, dim=-1)


def read_memory(attention: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """W* = aᵀ M for each query: ``attention [B, Q, S]``, ``memory [B, S, *shape]`` ->
    ``[B, Q, *shape]``."""
    flat = memory.flatten(2)
    return (attention @ flat).view(*attention.shape[:2], *memory.shape[2:])


@register
class MetaNet(Learner):
    """Meta Networks: a base learner and an embedding, both augmented by fast weights generated
    from loss gradients; example-level fast weights read from a memory by attention."""

    name = "metanet"
    Config = MetaNetConfig
    test_options = ("scale",)

    def __init__(self, config: MetaNetConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        if len(item_shape) != 3 or item_shape[1] != item_shape[2]:
            raise KShotError(f"metanet's networks are conv nets for square images [C, H, W], got "
                             f"items of shape {tuple(item_shape)}")
        channels, size = item_shape[0], item_shape[-1]
        if size >> CONV_BLOCKS < 1:
            raise KShotError(f"metanet's {CONV_BLOCKS} conv blocks need images of at least "
                             f"{1 << CONV_BLOCKS} pixels, got {size}")
        hidden = config.hidden
        self.embedding = AugmentedNet(channels, size, hidden, (hidden,))  # u, slow weights Q
        self.base = AugmentedNet(channels, size, hidden, (hidden, config.n_way))  # b, slow W
        self.task_generator = nn.ModuleList(  # d, slow weights G: one per layer of u
            TaskWeightGenerator(config.meta_hidden) for _ in self.embedding.weights)
        self.example_generator = nn.ModuleList(  # m, slow weights Z: one per layer of b
            ExampleWeightGenerator(config.meta_hidden) for _ in self.base.weights)

    # ------------------------------------------------------------------ the contract's extras
    @classmethod
    def train_defaults(cls, ways: int | None, shots: int) -> dict:
        """The authors' settings: one episode per step, 10 queries per class (5 for 20-way, whose
        queries cost 4× more), Adam 1e-3 constant, gradients clipped at norm 10; validation on
        episodes of the training way (the base learner's outputs)."""
        ways = ways or 5
        return {"ways": ways, "meta_batch": 1, "queries": 10 if ways <= 5 else 5, "lr": 1e-3,
                "schedule": "constant", "grad_clip": 10.0, "episodes": 100000,
                "val_every": 2000, "val_episodes": 200, "val_ways": ways, "val_shots": shots,
                "log_every": 200}

    @classmethod
    def config_defaults(cls, train_config) -> dict:
        return {"n_way": train_config.ways}

    @property
    def adapts_at_test(self) -> bool:
        return True

    @property
    def order_sensitive(self) -> bool:
        """The rounds of pairs follow the order of the support set: episodes come shuffled."""
        return True

    # ------------------------------------------------------------------ the algorithm
    def task_fast_weights(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Weights:
        """Q* of every episode (Algorithm 1, lines 1-6): each ``[B, *shape]`` of u's weights."""
        n_support = support_y.shape[1]
        steps = min(self.config.embedding_steps, n_support - 1)
        items = torch.arange(n_support, device=support_y.device)
        partners = (items + torch.arange(1, steps + 1, device=items.device)[:, None]) % n_support
        slow = self.embedding.slow(detach=True)  # the gradients are constants (meta information)
        scale = self.config.pair_scale

        def episode(sx: torch.Tensor, sy: torch.Tensor) -> Weights:
            embeddings, pullback = vjp(lambda weights: self.embedding.run(weights, None, sx), slow)
            round_loss = grad(lambda e, p: pair_loss(e, sy, p, scale))
            cotangents = vmap(round_loss, in_dims=(None, 0))(embeddings, partners)  # [T, S, D]
            return vmap(pullback)(cotangents)[0]  # each [T, *shape]

        gradients = vmap(episode)(support_x, support_y)  # each [B, T, *shape]
        return tuple(generate(g.detach().transpose(0, 1)) * unit for generate, g, unit in
                     zip(self.task_generator, gradients, self.embedding.fast_scales))

    def example_fast_weights(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Weights:
        """The memory M (lines 7-11): Wᵢ* = m(∇_W loss_task(b(W, x'ᵢ), y'ᵢ)) of every support item,
        each ``[B, S, *shape]`` of b's weights."""
        slow = self.base.slow(detach=True)

        def item_gradient(x: torch.Tensor, y: torch.Tensor) -> Weights:
            return grad(lambda w: F.cross_entropy(self.base.run(w, None, x[None]), y[None]))(slow)

        gradients = vmap(item_gradient)(support_x.flatten(0, 1), support_y.flatten())
        lead = support_y.shape
        return tuple((generate(g.detach()) * unit).view(*lead, *g.shape[1:]) for generate, g, unit
                     in zip(self.example_generator, gradients, self.base.fast_scales))

    def keys(self, task_fast: Weights, items: torch.Tensor) -> torch.Tensor:
        """r = u(Q, Q*, x) of every item: ``items [B, n, C, H, W]`` -> ``[B, n, D]``."""
        slow = self.embedding.slow()
        return vmap(lambda fast, x: self.embedding.run(slow, fast, x))(task_fast, items)

    def classify(self, attention: torch.Tensor, memory: Weights,
                 query_x: torch.Tensor) -> torch.Tensor:
        """b(W, W*, x) of every query with its own W* = aᵀ M (lines 16-20): ``[B, Q, n_way]``."""
        n_batch, n_query = attention.shape[:2]
        slow = self.base.slow()
        per_query = sum(m[0, 0].numel() for m in memory) * n_batch
        logits = []
        for part in _chunks(n_query, QUERY_CHUNK_ELEMENTS // per_query):
            fast = tuple(read_memory(attention[:, part], m).flatten(0, 1) for m in memory)
            x = query_x[:, part].flatten(0, 1)
            out = vmap(lambda w, item: self.base.run(slow, w, item[None])[0])(fast, x)
            logits.append(out.view(n_batch, -1, out.shape[-1]))
        return torch.cat(logits, 1)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[Q, n_way]`` of the queries (``[B, Q, n_way]`` for a batch). The gradients are
        computed even under ``torch.no_grad``; the outer graph is kept only with grad enabled."""
        self.check_items(query_x, support_y.ndim == 2)
        batched, (support_x, support_y, query_x) = self.task_batch(support_x, support_y, query_x)
        self.check_episode(support_y)
        n_support = support_y.shape[1]
        task_fast = self.task_fast_weights(support_x, support_y)
        keys = self.keys(task_fast, torch.cat([support_x, query_x], 1))
        attention = attention_read(keys[:, n_support:], keys[:, :n_support], self.config.scale)
        memory = self.example_fast_weights(support_x, support_y)
        logits = self.classify(attention, memory, query_x)
        return logits if batched else logits[0]

    def check_episode(self, support_y: torch.Tensor) -> None:
        if support_y.shape[1] < 2:
            raise KShotError("metanet needs at least 2 support items per episode (its "
                             f"representation loss is on pairs), got {support_y.shape[1]}")
        self.check_way(support_y, self.config.n_way, "base learner")

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(episode.support_x, episode.support_y, episode.query_x)
        loss = F.cross_entropy(logits.flatten(0, -2), episode.query_y.flatten())
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy(logits, episode.query_y)}
