"""Neural Turing Machine (Graves, Wayne & Danihelka 2014) and the LSTM baseline of its copy task.

An NTM is a controller network (an LSTM or a feed-forward layer) coupled to a memory of ``N`` rows
of width ``M`` through differentiable read and write heads: at each step the controller sees the
input and the previous reads, and emits the parameters of each head, which address the memory by
content and by location (:mod:`kshot.nn.memory`, the paper's eqs. 2–9); the output is a linear map
of the controller output and the new reads. Trained end to end by gradient descent, it learns
algorithms such as copying a sequence, and copies sequences longer than it was trained on.

These models map a sequence to a sequence (``sequence(inputs [B, T, in]) -> (logits [B, T, out],
trace)``). They are registered learners (``ntm``, ``lstm``) of the copy task (:mod:`kshot.tasks.copy`):
a copy batch has the shape of an episode with no support set, the sequences being the queries, so
the one Trainer trains them (with ``grad_clip``, as Graves et al.) and the one evaluator scores
them: ``forward(support_x, support_y, query_x)`` is the logits of the sequences ``query_x``,
``loss`` the sigmoid cross-entropy over the output phase, and the metric ``bits_per_sequence``
(lower is better). The item shape is ``(input_size,)``; the outputs are ``input_size - 1`` (the
copy task's bits: every input channel but the delimiter) unless the config's ``outputs`` says.

Parameter counts at the defaults on the 8-bit copy task (input 9, output 8): the NTM with an LSTM
controller has 65,496 (LSTM controller 52,400; read head 2,626; write head 6,666; output 968;
learned initial memory 2,560, reads 20 and weightings 256; the paper's: 67,561), with a
feed-forward controller 16,096; the LSTM baseline (3 layers of 56 units) 66,536 (3 × 256 units,
the paper's baseline, would have 1,328,136 here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from kshot.config import AT_LEAST_ONE, NON_NEGATIVE, check_choice, check_ranges
from kshot.errors import KShotError
from kshot.methods.base import Learner, register
from kshot.nn.memory import HeadProjection, address, read, write
from kshot.tasks.copy import CopyBatch, bit_errors, copy_loss

CONTROLLERS = ("lstm", "feedforward")
MEMORY_INITS = ("learned", "constant")
CONSTANT_MEMORY = 1e-6
"""The value every memory cell starts from with ``memory_init = "constant"``."""
INITIAL_FOCUS = 5.0
"""Initial logit of slot 0 in the heads' starting weightings (the others 0): weight 0.54 of 128."""


@dataclass
class NTMConfig:
    controller: str = "lstm"
    """Controller network: lstm (one LSTM layer) or feedforward (one tanh layer)."""
    controller_size: int = 100
    """Units of the controller (the paper's copy task: 100)."""
    memory_slots: int = 128
    """Memory rows N (the paper: 128)."""
    memory_width: int = 20
    """Width M of a memory row (the paper: 20)."""
    read_heads: int = 1
    """Read heads (the paper's copy task: 1)."""
    write_heads: int = 1
    """Write heads (the paper's copy task: 1)."""
    shift_range: int = 1
    """Largest shift R of a head: it shifts by an offset in -R .. R (the paper: 1)."""
    memory_init: str = "learned"
    """Memory at the start of each sequence: learned (one trained matrix N × M) or constant
    (every cell 1e-6)."""
    outputs: int = 0
    """Outputs per step (0: the input width - 1, the copy task's bits)."""

    def __post_init__(self) -> None:
        check_ranges(self, controller_size=AT_LEAST_ONE, memory_slots=AT_LEAST_ONE,
                     memory_width=AT_LEAST_ONE, read_heads=AT_LEAST_ONE,
                     write_heads=AT_LEAST_ONE, shift_range=NON_NEGATIVE, outputs=NON_NEGATIVE)
        check_choice(self, "controller", CONTROLLERS)
        check_choice(self, "memory_init", MEMORY_INITS)


class NTMState(NamedTuple):
    """What an NTM carries from one step to the next (``B`` sequences)."""

    memory: torch.Tensor  # [B, N, M]
    reads: torch.Tensor  # [B, R, M]: the read vectors of the last step
    read_weights: torch.Tensor  # [B, R, N]
    write_weights: torch.Tensor  # [B, W, N]
    controller: tuple[torch.Tensor, torch.Tensor] | None  # LSTM (h, c) [B, C] each; None: ff


@dataclass
class NTMTrace:
    """The weightings of a run over time, for the book's picture of the copy task:
    ``read_weights [B, T, R, N]`` and ``write_weights [B, T, W, N]``; :attr:`read` and
    :attr:`write` are those of the first head, ``[B, T, N]``."""

    read_weights: torch.Tensor
    write_weights: torch.Tensor

    @property
    def read(self) -> torch.Tensor:
        return self.read_weights[:, :, 0]

    @property
    def write(self) -> torch.Tensor:
        return self.write_weights[:, :, 0]


class CopyModel(Learner):
    """What the NTM and the LSTM baseline share: a sequence model with ``input_size`` inputs (the
    item shape ``(input_size,)``) and ``output_size`` logits per step, a learner of the copy task."""

    metric = "bits_per_sequence"

    def __init__(self, config, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        if len(self.item_shape) != 1 or self.item_shape[0] < 2:
            raise KShotError(f"{self.name} reads sequences of vectors: its item shape must be "
                             f"(input width,) with a width >= 2, got {self.item_shape}")
        self.input_size = self.item_shape[0]
        self.output_size = config.outputs or self.input_size - 1

    def check_inputs(self, inputs: torch.Tensor) -> None:
        if inputs.ndim != 3 or inputs.shape[-1] != self.input_size:
            raise KShotError(f"{type(self).__name__} was built for inputs [batch, steps, "
                             f"{self.input_size}], got {tuple(inputs.shape)}; build it with "
                             "input_size = the task's bit width + 1 (the delimiter channel)")

    def sequence(self, inputs: torch.Tensor):
        """``inputs [B, T, input_size]`` -> ``(logits [B, T, output_size], trace or None)``."""
        raise NotImplementedError

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor) -> torch.Tensor:
        """The logits of the sequences ``query_x [B, T, input_size]`` (a copy batch has no support
        set: ``support_x`` must be empty)."""
        if support_x.numel():
            raise KShotError(f"{self.name} reads whole sequences, not support sets: give it copy "
                             "batches (kshot ntm copy), not class episodes")
        return self.sequence(query_x)[0]

    def copy_loss(self, batch: CopyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Sigmoid cross-entropy over the output phase and ``bits_per_sequence`` of a batch."""
        if not isinstance(batch, CopyBatch):
            raise KShotError(f"{self.name} trains on copy batches (kshot ntm copy), not on "
                             f"{type(batch).__name__}s of a class data set")
        outputs, _ = self.sequence(batch.inputs)
        return copy_loss(outputs, batch)

    loss = copy_loss

    def episode_scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Wrong bits of each sequence: ``outputs [B, 2T+1, bits]``, ``targets [B, T, bits]``."""
        return bit_errors(outputs[:, -targets.shape[1]:], targets)


@register
class NTM(CopyModel):
    """A Neural Turing Machine: ``sequence(inputs [B, T, input_size]) -> (logits [B, T,
    output_size], NTMTrace)``. Each step writes with the write heads, then reads with the read
    heads (a read can see this step's write)."""

    name = "ntm"
    Config = NTMConfig

    def __init__(self, config: NTMConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        c, input_size, output_size = config, self.input_size, self.output_size
        read_size = c.read_heads * c.memory_width
        if c.controller == "lstm":
            self.controller = nn.LSTMCell(input_size + read_size, c.controller_size)
        else:
            self.controller = nn.Sequential(nn.Linear(input_size + read_size, c.controller_size),
                                            nn.Tanh())
        self.read_projection = HeadProjection(c.controller_size, c.read_heads, c.memory_width,
                                              c.shift_range, write=False)
        self.write_projection = HeadProjection(c.controller_size, c.write_heads, c.memory_width,
                                               c.shift_range, write=True)
        self.output = nn.Linear(c.controller_size + read_size, output_size)
        bound = (c.memory_slots + c.memory_width) ** -0.5
        initial = torch.empty(c.memory_slots, c.memory_width).uniform_(-bound, bound)
        if c.memory_init == "learned":
            self.initial_memory = nn.Parameter(initial)  # [N, M]
        else:
            self.register_buffer("initial_memory", torch.full_like(initial, CONSTANT_MEMORY))
        self.initial_reads = nn.Parameter(0.01 * torch.randn(c.read_heads, c.memory_width))
        # weightings start as a softmax of learned logits, focused on slot 0 at initialisation:
        # a uniform start over a constant memory is a symmetry nothing breaks (every slot is
        # written alike, content addressing cannot tell slots apart, a shift of a uniform
        # weighting is uniform, and the logits' gradients are all equal), so the heads would
        # never learn to address locations
        start = torch.zeros(c.memory_slots)
        start[0] = INITIAL_FOCUS
        self.initial_read_logits = nn.Parameter(start.repeat(c.read_heads, 1))
        self.initial_write_logits = nn.Parameter(start.repeat(c.write_heads, 1))

    def initial_state(self, batch_size: int) -> NTMState:
        """The state every sequence starts from (memory, reads and weightings as learned)."""
        def expand(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.unsqueeze(0).expand(batch_size, *tensor.shape)

        controller = None
        if self.config.controller == "lstm":
            zeros = self.initial_reads.new_zeros(batch_size, self.config.controller_size)
            controller = (zeros, zeros)
        return NTMState(memory=expand(self.initial_memory), reads=expand(self.initial_reads),
                        read_weights=expand(torch.softmax(self.initial_read_logits, -1)),
                        write_weights=expand(torch.softmax(self.initial_write_logits, -1)),
                        controller=controller)

    def memory_step(self, controller_output: torch.Tensor, state: NTMState) -> NTMState:
        """Address, write, then read the memory from ``controller_output [B, C]``; the returned
        state keeps ``state.controller``."""
        writing = self.write_projection(controller_output)
        write_weights = address(writing, state.memory, state.write_weights)  # [B, W, N]
        memory = write(state.memory, write_weights, writing.erase, writing.add)  # [B, N, M]
        reading = self.read_projection(controller_output)
        read_weights = address(reading, memory, state.read_weights)  # [B, R, N]
        return NTMState(memory, read(memory, read_weights), read_weights, write_weights,
                        state.controller)

    def step(self, inputs: torch.Tensor, state: NTMState) -> tuple[torch.Tensor, NTMState]:
        """One time step: ``inputs [B, input_size]`` -> ``(logits [B, output_size], state)``."""
        controller_input = torch.cat([inputs, state.reads.flatten(1)], -1)
        if state.controller is not None:
            hidden, cell = self.controller(controller_input, state.controller)
            controller_state = (hidden, cell)
        else:
            hidden, controller_state = self.controller(controller_input), None
        state = self.memory_step(hidden, state._replace(controller=controller_state))
        return self.output(torch.cat([hidden, state.reads.flatten(1)], -1)), state

    def sequence(self, inputs: torch.Tensor) -> tuple[torch.Tensor, NTMTrace]:
        self.check_inputs(inputs)
        state = self.initial_state(inputs.shape[0])
        outputs, read_weights, write_weights = [], [], []
        for t in range(inputs.shape[1]):
            output, state = self.step(inputs[:, t], state)
            outputs.append(output)
            read_weights.append(state.read_weights)
            write_weights.append(state.write_weights)
        trace = NTMTrace(torch.stack(read_weights, 1), torch.stack(write_weights, 1))
        return torch.stack(outputs, 1), trace  # [B, T, output_size]


@dataclass
class LSTMBaselineConfig:
    hidden_size: int = 56
    """Units of each LSTM layer (56: about the NTM's parameter count on the 8-bit copy task)."""
    layers: int = 3
    """Stacked LSTM layers (the paper's baseline: 3)."""
    outputs: int = 0
    """Outputs per step (0: the input width - 1, the copy task's bits)."""

    def __post_init__(self) -> None:
        check_ranges(self, hidden_size=AT_LEAST_ONE, layers=AT_LEAST_ONE, outputs=NON_NEGATIVE)


@register
class LSTMBaseline(CopyModel):
    """The copy task's baseline: stacked LSTM layers and a linear output; ``sequence(inputs [B, T,
    input_size]) -> (logits [B, T, output_size], None)`` (no memory to trace)."""

    name = "lstm"
    Config = LSTMBaselineConfig

    def __init__(self, config: LSTMBaselineConfig, item_shape: tuple[int, ...]) -> None:
        super().__init__(config, item_shape)
        self.lstm = nn.LSTM(self.input_size, config.hidden_size, config.layers, batch_first=True)
        self.output = nn.Linear(config.hidden_size, self.output_size)

    def sequence(self, inputs: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.check_inputs(inputs)
        hidden, _ = self.lstm(inputs)  # [B, T, hidden_size]
        return self.output(hidden), None


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
