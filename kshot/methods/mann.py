"""Memory-Augmented Neural Network with least-recently-used access (Santoro, Bartunov, Botvinick,
Wierstra & Lillicrap, "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016).

An LSTM controller coupled to an external memory learns, across episodes, to *bind* an image to its
label in memory and to recall the label when another image of the class comes: the weights learn
how to learn, the memory holds what one episode taught. Episodes are sequences: at step t the
controller sees the image x_t together with the correct label of the *previous* step, y_{t-1}, and
must predict y_t; class labels are reshuffled every episode, so nothing but the memory of this
episode can say which label an image has.

Memory access at each step (the paper's section 3.2, :mod:`kshot.nn.memory`)::

    h_t, c_t = LSTM([x_t, y_{t-1}, r_{t-1}], h_{t-1}, c_{t-1})
    k_t, α_t = heads(h_t)                      (one key and one write gate per head)
    w^w_t = σ(α) w^r_{t-1} + (1 - σ(α)) w^lu_{t-1}          write where we read, or to unused slots
    M_t = clear(M_{t-1}, least used slot) + Σ_heads w^w_t k_tᵀ
    w^r_t = softmax(K(k_t, M_t(i)))  (cosine K),  r_t = Σ_i w^r_t(i) M_t(i)
    w^u_t = γ w^u_{t-1} + w^r_t + w^w_t,  w^lu_t: the n least-used slots (n = read heads)
    output_t = W [h_t, r_t]

The read follows the write (both on M_t, as the paper writes them): the slots a key was just
written to are the ones it reads, so the next step's σ(α) w^r_{t-1} part of the write adds what
it knows then (the label, given one step late) to the same slots.

**Labels.** ``labels="onehot"``: the label input and the outputs are one-hot over ``classes`` (the
paper's 5-class episodes). ``labels="string"``: the paper's labels for 15 classes, strings of
``string_length`` characters, each one of ``string_symbols`` symbols (5 × 5: 25 label inputs and
5 softmaxes of 5 outputs); each class of an episode gets a random string, distinct within the
episode, drawn by a generator seeded from the episode itself (its images and labels, hashed per
episode), so the strings are a pure function of the episode however episodes are batched. The
loss is the cross-entropy of every step, summed over a string's characters (a string is right when
every character is).

**Santoro's protocol** (``kshot train mann``: its ``train_defaults`` are the paper's episodes):
an episode is ``ways`` classes × 10 images and no queries, read as one sequence. The sequence
order is the sampler's seeded shuffle (the learner is ``order_sensitive``, so the Trainer and the
evaluator draw episodes with :class:`~kshot.data.episodes.EpisodeSampler` ``shuffle=True``: a
random order that is a pure function of ``(seed, episode)``, every item once), and the sampler's
random class → label assignment reshuffles the labels every episode. Accuracy *by instance* (the
1st, 2nd, ... presentation of a class within the episode) is :func:`instance_scores`, scored by
:func:`evaluate_instances` and ``kshot santoro``.

**The shared contract.** ``forward(support_x, support_y, query_x)`` reads the support items with
their delayed labels in the given order, then predicts every query from the state after the
support (the queries independently of each other: the state is expanded over them and each takes
one step, given the label of the last support item). The logits are ``[Q, n_way]``: the outputs of
the episode's labels (one-hot), or the log-probability of each class's string (string labels).

Deviations: the paper's w^lu marks the n least-used slots and every head's write mixes in all of
them, which is what happens here (``least_used(usage, read_heads)`` shared by the heads); keys are
squashed by tanh (the paper leaves the key's range open); ``key_strength`` (on by default) scales
the cosine similarities of each read head by a learned β, the NTM's key strength, starting at 10.
With the paper's plain softmax over 128 slots a read is nearly uniform (cosines lie in [-1, 1]),
and the network took longer than we could afford to start recalling: on 20×20 Omniglot, 5
classes, 6,000 episodes of the paper's form gave the same accuracy by instance as on sequences
whose images were shuffled against their labels (label statistics only), while with β the 2nd to
10th presentations were 7 to 14 points above that control (32-35% against 20-25%).
``--no-key-strength`` trains the paper's form.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import AT_LEAST_ONE, Range, check_choice, check_ranges
from kshot.data.episodes import Episode
from kshot.errors import KShotError
from kshot.methods.base import Learner, register
from kshot.nn.memory import (
    clear_least_used,
    content_weights,
    least_used,
    lrua_write_weights,
    read,
    update_usage,
    write,
)

LABEL_KINDS = ("onehot", "string")
INSTANCES = (1, 2, 3, 4, 5, 10)
"""The presentations of a class whose accuracy Santoro et al. report (their table 1)."""
INITIAL_MEMORY = 1e-6
"""The value every memory cell starts each episode from."""
INITIAL_STRENGTH = 10.0
"""With ``key_strength``: the key strength β a read head starts training from."""


@dataclass
class MANNConfig:
    controller_size: int = 200
    """Units of the LSTM controller (the paper: 200)."""
    memory_slots: int = 128
    """Memory rows N (the paper: 128)."""
    memory_width: int = 40
    """Width M of a memory row (the paper: 40)."""
    read_heads: int = 4
    """Read heads, each with its key and write gate; also the n of the n least-used slots (the
    paper: 4)."""
    usage_decay: float = 0.95
    """γ: usage decays by this factor each step before the step's read and write weights are
    added."""
    labels: str = "onehot"
    """onehot (the paper's 5-class episodes) or string (its 15-class episodes: each label a
    string of string_length characters of string_symbols symbols); kshot train picks string for
    more than 5 ways."""
    classes: int = 5
    """onehot: label inputs and outputs, the most classes an episode may have (kshot train: the
    training --ways)."""
    string_length: int = 5
    """string: characters per label (the paper: 5)."""
    string_symbols: int = 5
    """string: symbols each character is one of (the paper: 5)."""
    key_strength: bool = True
    """A learned key strength β > 0 per read head (softplus, starting at 10) scales the cosine
    similarities before the read softmax, as the NTM's β (off: the paper's softmax of plain cosine
    similarities, which recalls nothing in the first 6,000 episodes here)."""

    def __post_init__(self) -> None:
        check_ranges(self, controller_size=AT_LEAST_ONE, memory_slots=AT_LEAST_ONE,
                     memory_width=AT_LEAST_ONE, read_heads=AT_LEAST_ONE,
                     usage_decay=Range(0, 1), classes=Range(2), string_length=AT_LEAST_ONE,
                     string_symbols=Range(2))
        check_choice(self, "labels", LABEL_KINDS)
        if self.read_heads > self.memory_slots:
            raise KShotError(f"--read-heads {self.read_heads} is more than the "
                             f"{self.memory_slots} memory slots; use at most --memory-slots heads")

    @property
    def label_width(self) -> int:
        """Label inputs, and outputs, per step."""
        if self.labels == "onehot":
            return self.classes
        return self.string_length * self.string_symbols

    @property
    def max_classes(self) -> int:
        """The most classes an episode may have: the distinct labels there are."""
        return self.classes if self.labels == "onehot" else self.string_symbols ** self.string_length


class MANNState(NamedTuple):
    """What the MANN carries from one step to the next (``B`` sequences)."""

    memory: torch.Tensor  # [B, N, M]
    usage: torch.Tensor  # [B, N]: w^u
    read_weights: torch.Tensor  # [B, H, N]: w^r of the last step
    reads: torch.Tensor  # [B, H, M]: r of the last step
    hidden: torch.Tensor  # [B, C]
    cell: torch.Tensor  # [B, C]

    def expand(self, copies: int) -> MANNState:
        """Each sequence's state repeated ``copies`` times: ``[B, ...]`` -> ``[B * copies, ...]``
        (sequence b's copies are rows ``b * copies .. (b + 1) * copies - 1``)."""
        return MANNState(*(t.repeat_interleave(copies, dim=0) for t in self))


# ---------------------------------------------------------------------------- sequences and labels
def delayed(labels: torch.Tensor) -> torch.Tensor:
    """The label inputs of a sequence: ``labels [B, T, W]`` (encoded) shifted one step later, the
    first step given zeros (no label yet): step t sees the label of step t - 1."""
    return torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)


def episode_strings(support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, length: int,
                    symbols: int) -> torch.Tensor:
    """Random string labels, distinct within each episode: ``[B, n_way, length]`` symbol indices.

    ``support_x [B, S, ...]``, ``support_y [B, S]``. Each episode's strings are drawn by a generator
    seeded from a hash of that episode's items and labels, so they are a pure function of the
    episode (the same in a batch of 1 or 16, on every run) and differ from episode to episode.
    """
    if n_way > symbols ** length:
        raise KShotError(f"{n_way} classes need {n_way} distinct labels, but strings of {length} "
                         f"characters of {symbols} symbols make only {symbols ** length}")
    numbers = []
    for items, labels in zip(support_x.detach().cpu(), support_y.detach().cpu(), strict=True):
        # one seeded draw per episode (a seed, not a loop over items)
        digest = hashlib.blake2b(labels.numpy().tobytes() + items.float().numpy().tobytes(),
                                 digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        numbers.append(torch.randperm(symbols ** length, generator=generator)[:n_way])
    powers = symbols ** torch.arange(length - 1, -1, -1)  # most significant character first
    strings = (torch.stack(numbers).unsqueeze(-1) // powers) % symbols  # [B, n_way, length]
    return strings.to(support_y.device)


def instance_numbers(labels: torch.Tensor) -> torch.Tensor:
    """Which presentation of its class each step is: ``labels [B, T]`` -> ``[B, T]``, 1 at a
    class's first item in the sequence, 2 at its second, and so on."""
    seen = F.one_hot(labels).cumsum(dim=1)  # [B, T, classes]: items of each class up to step t
    return seen.gather(2, labels.unsqueeze(-1)).squeeze(-1)


def instance_scores(correct: torch.Tensor, labels: torch.Tensor,
                    instances: tuple[int, ...] = INSTANCES) -> torch.Tensor:
    """Accuracy by instance of each sequence: ``correct [B, T]`` (bool), ``labels [B, T]`` ->
    ``[B, len(instances)]``, the share of classes predicted right at their k-th presentation
    (NaN where no class of the sequence has a k-th presentation)."""
    wanted = torch.as_tensor(instances, device=labels.device)
    at = instance_numbers(labels).unsqueeze(-1) == wanted  # [B, T, K]
    hits = (at & correct.unsqueeze(-1)).sum(1).double()
    counts = at.sum(1).double()
    return (hits / counts).float()  # 0/0 -> NaN


# ---------------------------------------------------------------------------- the model
@register
class MANN(Learner):
    """Memory-augmented neural network with least-recently-used access (Santoro et al. 2016)."""

    name = "mann"
    Config = MANNConfig

    def __init__(self, config: MANNConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        c = config
        self.item_size = 1
        for size in self.item_shape:
            self.item_size *= size
        read_size = c.read_heads * c.memory_width
        self.controller = nn.LSTMCell(self.item_size + c.label_width + read_size,
                                      c.controller_size)
        # per head: key (M), write gate α (1), and the key strength β (1) when learned
        self.per_head = c.memory_width + 1 + int(c.key_strength)
        self.heads = nn.Linear(c.controller_size, c.read_heads * self.per_head)
        if c.key_strength:  # β starts at about INITIAL_STRENGTH (softplus of the bias)
            with torch.no_grad():
                self.heads.bias.view(c.read_heads, self.per_head)[:, -1] = INITIAL_STRENGTH
        self.output = nn.Linear(c.controller_size + read_size, c.label_width)

    @property
    def order_sensitive(self) -> bool:
        """A sequence reader: episodes come with their items in a seeded random order."""
        return True

    @classmethod
    def train_defaults(cls, ways: int | None, shots: int) -> dict:
        """Santoro et al.'s episodes: 5 classes (or --ways) × 10 images, no queries (every step is
        predicted), 16 episodes per step, random rotations and translations; Adam at 1e-3 (the
        paper: RMSProp at 1e-4), gradients clipped at norm 10; validation on 5-way 1-shot
        episodes of the shared contract."""
        return {"ways": ways or 5, "shots": 10, "queries": 0, "meta_batch": 16,
                "episodes": 1_600_000, "lr": 1e-3, "schedule": "constant", "grad_clip": 10.0,
                "augment": "affine", "aug_rotation": 10.0, "aug_translate": 1.0,
                "aug_shear": 0.0, "aug_scale": 0.0, "aug_probability": 0.5,
                "val_every": 16_000, "val_episodes": 200, "val_ways": 5, "val_shots": 1,
                "val_queries": 5, "log_every": 1600}

    @classmethod
    def config_defaults(cls, train_config) -> dict:
        """One-hot labels over the training --ways for up to 5 classes, the paper's string labels
        beyond (its 15-class episodes)."""
        return {"classes": max(train_config.ways, 2),
                "labels": "onehot" if train_config.ways <= 5 else "string"}

    # ------------------------------------------------------------------------------------ steps
    def initial_state(self, batch_size: int, reference: torch.Tensor) -> MANNState:
        """Every sequence starts from a constant memory, zero usage, no reads, a zero LSTM state."""
        c = self.config
        zeros = reference.new_zeros
        return MANNState(memory=reference.new_full((batch_size, c.memory_slots, c.memory_width),
                                                   INITIAL_MEMORY),
                         usage=zeros(batch_size, c.memory_slots),
                         read_weights=zeros(batch_size, c.read_heads, c.memory_slots),
                         reads=zeros(batch_size, c.read_heads, c.memory_width),
                         hidden=zeros(batch_size, c.controller_size),
                         cell=zeros(batch_size, c.controller_size))

    def step(self, inputs: torch.Tensor, state: MANNState) -> tuple[torch.Tensor, MANNState]:
        """One time step: ``inputs [B, item_size + label_width]`` (the item and the previous
        label) -> ``(outputs [B, label_width], state)``."""
        c = self.config
        hidden, cell = self.controller(torch.cat([inputs, state.reads.flatten(1)], -1),
                                       (state.hidden, state.cell))
        raw = self.heads(hidden).view(-1, c.read_heads, self.per_head)  # [B, H, P]
        key = torch.tanh(raw[..., : c.memory_width])  # [B, H, M]
        alpha = raw[..., c.memory_width]  # [B, H]: the write gate before its sigmoid
        strength = F.softplus(raw[..., c.memory_width + 1]) if c.key_strength else 1.0
        # write (eqs. 6, 7): the previous step's least-used slots and read weights; the least-used
        # slot is cleared first
        previous_least_used = least_used(state.usage, c.read_heads)  # [B, N]
        write_weights = lrua_write_weights(alpha, state.read_weights, previous_least_used)
        memory = write(clear_least_used(state.memory, state.usage), write_weights, None, key)
        # read (eqs. 2, 3) from the memory just written
        read_weights = content_weights(key, memory, strength)  # [B, H, N]
        reads = read(memory, read_weights)  # [B, H, M]
        usage = update_usage(state.usage, read_weights, write_weights, c.usage_decay)  # eq. 4
        outputs = self.output(torch.cat([hidden, reads.flatten(1)], -1))
        return outputs, MANNState(memory, usage, read_weights, reads, hidden, cell)

    def sequence(self, items: torch.Tensor, labels: torch.Tensor,
                 state: MANNState | None = None) -> tuple[torch.Tensor, MANNState]:
        """Read ``items [B, T, *item_shape]`` with their encoded labels ``[B, T, label_width]``,
        each label given one step late (:func:`delayed`). Returns ``(outputs [B, T,
        label_width], final state)``; output t predicts the label of item t."""
        n_batch, steps = items.shape[:2]
        if labels.shape != (n_batch, steps, self.config.label_width):
            raise KShotError(f"mann needs labels [batch, steps, {self.config.label_width}] for "
                             f"items {tuple(items.shape)}, got {tuple(labels.shape)}")
        inputs = torch.cat([items.reshape(n_batch, steps, -1), delayed(labels)], -1)
        state = state or self.initial_state(n_batch, inputs)
        outputs = []
        for t in range(steps):
            output, state = self.step(inputs[:, t], state)
            outputs.append(output)
        return torch.stack(outputs, 1), state

    # ------------------------------------------------------------------------------------ labels
    def check_label_space(self, n_way: int) -> None:
        c = self.config
        if n_way > c.max_classes:
            if c.labels == "onehot":
                raise KShotError(f"this mann has one-hot labels for at most {c.classes} classes, "
                                 f"got an episode of {n_way}; use --ways {c.classes} or fewer, or "
                                 f"train a run with --classes {n_way} or --labels string")
            raise KShotError(f"this mann's string labels ({c.string_length} characters of "
                             f"{c.string_symbols} symbols) name at most {c.max_classes} classes, "
                             f"got an episode of {n_way}")

    def label_strings(self, support_x: torch.Tensor, support_y: torch.Tensor,
                      n_way: int) -> torch.Tensor | None:
        """The episodes' string labels ``[B, n_way, length]`` (:func:`episode_strings`), None for
        one-hot labels."""
        if self.config.labels == "onehot":
            return None
        return episode_strings(support_x, support_y, n_way, self.config.string_length,
                               self.config.string_symbols)

    def encode(self, labels: torch.Tensor, strings: torch.Tensor | None) -> torch.Tensor:
        """``labels [B, T]`` -> the label inputs ``[B, T, label_width]`` (one-hot, or the one-hot
        characters of each label's string, concatenated)."""
        if strings is None:
            return F.one_hot(labels, self.config.classes).float()
        characters = strings.gather(1, labels.unsqueeze(-1).expand(-1, -1, strings.shape[-1]))
        return F.one_hot(characters, self.config.string_symbols).flatten(2).float()  # [B, T, L*S]

    def targets(self, labels: torch.Tensor, strings: torch.Tensor | None) -> torch.Tensor:
        """What the outputs should say: the labels ``[B, T]`` (one-hot) or their strings'
        characters ``[B, T, length]``."""
        if strings is None:
            return labels
        return strings.gather(1, labels.unsqueeze(-1).expand(-1, -1, strings.shape[-1]))

    def step_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor,
                                                                                   torch.Tensor]:
        """Cross-entropy (summed over a string's characters) and correctness of each step:
        ``outputs [B, T, label_width]`` -> ``([B, T], [B, T] bool)``."""
        if self.config.labels == "onehot":
            losses = F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none")
            return losses, outputs.argmax(-1) == targets
        characters = outputs.unflatten(-1, (self.config.string_length, self.config.string_symbols))
        losses = F.cross_entropy(characters.permute(0, 3, 1, 2), targets, reduction="none")
        return losses.sum(-1), (characters.argmax(-1) == targets).all(-1)

    def class_logits(self, outputs: torch.Tensor, strings: torch.Tensor | None,
                     n_way: int) -> torch.Tensor:
        """``outputs [B, T, label_width]`` -> a score per class of the episode ``[B, T, n_way]``:
        the one-hot outputs of labels ``0 .. n_way-1``, or the log-probability of each class's
        string (the sum of its characters' log-softmax)."""
        if strings is None:
            return outputs[..., :n_way]
        log_probs = F.log_softmax(
            outputs.unflatten(-1, (self.config.string_length, self.config.string_symbols)), -1)
        chosen = F.one_hot(strings, self.config.string_symbols).to(log_probs.dtype)  # [B, N, L, S]
        return torch.einsum("btls,bnls->btn", log_probs, chosen)

    # ------------------------------------------------------------------------------------ episodes
    def _read_support(self, support_x: torch.Tensor, support_y: torch.Tensor):
        """Check a batched support set and read it: ``(outputs, state, strings, encoded labels,
        n_way)``."""
        self.check_items(support_x, True)
        if support_y.shape[1] == 0:
            raise KShotError("mann reads the support set into memory: an episode needs at least one "
                             "support item")
        n_way = int(support_y.max()) + 1
        self.check_label_space(n_way)
        strings = self.label_strings(support_x, support_y, n_way)
        encoded = self.encode(support_y, strings)
        outputs, state = self.sequence(support_x, encoded)
        return outputs, state, strings, encoded, n_way

    def _query_outputs(self, state: MANNState, last_label: torch.Tensor,
                       query_x: torch.Tensor) -> torch.Tensor:
        """Each query predicted from the state after the support, independently: ``query_x [B, Q,
        ...]`` -> ``[B, Q, label_width]``, one step from the expanded state."""
        self.check_items(query_x, True)
        n_batch, n_query = query_x.shape[:2]
        inputs = torch.cat([query_x.reshape(n_batch, n_query, -1),
                            last_label.unsqueeze(1).expand(-1, n_query, -1)], -1)
        outputs, _ = self.step(inputs.flatten(0, 1), state.expand(n_query))
        return outputs.view(n_batch, n_query, -1)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        batched, (support_x, support_y, query_x) = self.task_batch(support_x, support_y, query_x)
        _, state, strings, encoded, n_way = self._read_support(support_x, support_y)
        if query_x.shape[1] == 0:
            logits = encoded.new_zeros(support_y.shape[0], 0, n_way)
        else:
            outputs = self._query_outputs(state, encoded[:, -1], query_x)
            logits = self.class_logits(outputs, strings, n_way)
        return logits if batched else logits[0]

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of every step of the support sequence (Santoro's protocol) and of every
        query predicted after it, if the episode has queries; metrics: accuracy over all of them
        and the accuracy at the 1st, 2nd, 5th, 10th presentation of a class (those the episode's
        shot allows)."""
        support_x, support_y, query_x, query_y = (episode.support_x, episode.support_y,
                                                  episode.query_x, episode.query_y)
        if not episode.batched:
            support_x, support_y, query_x, query_y = (support_x[None], support_y[None],
                                                      query_x[None], query_y[None])
        outputs, state, strings, encoded, _ = self._read_support(support_x, support_y)
        losses, correct = self.step_losses(outputs, self.targets(support_y, strings))
        instances = instance_scores(correct, support_y)
        if query_x.shape[1]:
            query_outputs = self._query_outputs(state, encoded[:, -1], query_x)
            query_losses, query_correct = self.step_losses(query_outputs,
                                                           self.targets(query_y, strings))
            losses = torch.cat([losses, query_losses], 1)
            correct = torch.cat([correct, query_correct], 1)
        loss = losses.mean()
        metrics = {"loss": float(loss.detach()), "accuracy": float(correct.float().mean())}
        for index, instance in enumerate(INSTANCES):
            if instance in (1, 2, 5, 10) and instance <= episode.k_shot:
                metrics[f"instance_{instance}"] = float(instances[:, index].nanmean())
        return loss, metrics


# ---------------------------------------------------------------------------- Santoro's scoring
@dataclass
class InstanceReport:
    """Result of :func:`evaluate_instances`: accuracy (a fraction) at each presentation of a class
    (``instances``) over ``episodes`` sequences, their 95% CI over episodes, and each episode's."""

    instances: tuple[int, ...]
    accuracy: dict[int, float]
    ci95: dict[int, float]
    per_episode: torch.Tensor  # [episodes, len(instances)]
    episodes: int
    n_way: int
    k_shot: int
    seed: int
    seconds: float


def evaluate_instances(learner: MANN, sampler, episodes: int = 1000, batch_size: int = 16,
                       device: str | torch.device = "cpu",
                       instances: tuple[int, ...] = INSTANCES) -> InstanceReport:
    """Santoro's accuracy by instance: episodes ``sampler.start ..`` of ``sampler`` (``n_way``
    classes × ``k_shot`` images, no queries), each read as one sequence in the sampler's seeded
    shuffled order, every step predicted before its label is given."""
    from kshot.config import check_count
    from kshot.evaluate import confidence95

    check_count("episodes", episodes, "--episodes")
    check_count("batch_size", batch_size, "--batch-size")
    if not isinstance(learner, MANN):
        raise KShotError(f"accuracy by instance is scored for mann runs, not {learner.name!r}")
    if max(instances) > sampler.k_shot:
        raise KShotError(f"the {max(instances)}th presentation needs episodes of at least "
                         f"{max(instances)} images per class, got {sampler.k_shot}")
    sampler = sampler.with_shuffle()
    was_training = learner.training
    learner.eval()
    scores = torch.empty(episodes, len(instances))
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, episodes, batch_size):
            indices = range(sampler.start + first, sampler.start + min(first + batch_size, episodes))
            batch = sampler.batch(list(indices)).to(device)
            outputs, _, strings, _, _ = learner._read_support(batch.support_x, batch.support_y)
            _, correct = learner.step_losses(outputs, learner.targets(batch.support_y, strings))
            scores[first : first + len(indices)] = instance_scores(correct, batch.support_y,
                                                                   instances).cpu()
    seconds = time.perf_counter() - started
    learner.train(was_training)
    return InstanceReport(tuple(instances),
                          {k: float(scores[:, i].mean()) for i, k in enumerate(instances)},
                          {k: confidence95(scores[:, i]) for i, k in enumerate(instances)},
                          scores, episodes, sampler.n_way, sampler.k_shot, sampler.seed, seconds)
