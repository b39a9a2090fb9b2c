"""Any ``nn.Module`` as a pure function of its parameters, batched over tasks: the shared piece of
the methods that adapt a model with gradient steps on each task (MAML, Meta-SGD, the LSTM
meta-learner, domain-adaptive meta-learning, a fine-tuned baseline).

:class:`TaskModel` wraps a module with ``torch.func.functional_call``; ``vmap`` over a leading task
dimension runs a meta-batch of tasks in one pass (a convolution over 32 tasks becomes one grouped
convolution) instead of a Python loop over tasks and module copies; ``torch.func.grad`` gives the
inner-loop gradients, which the outer ``backward`` differentiates again (second order) unless they
are detached (first order). Nothing holds a graph from one call to the next, so memory stays flat.

Batch norm is explicit. Training always normalises each pass by the statistics of its own batch
(one task's items), and after each training step the running averages take in the statistics of the
initialisation on the step's support items (all tasks as one batch, outside the differentiated
pass). At test, ``norm`` chooses:

* ``"episode"``: every pass normalises by its own batch's statistics, as in training (Finn et al.'s
  MAML: transductive, a task's query set is normalised as one batch);
* ``"running"``: every pass, the inner steps included, uses the running averages, so a query's
  prediction does not depend on the other queries.

The same trained model can be scored both ways.

:class:`CompiledObjective` computes a meta-objective and its gradients for every trainable
parameter in one graph compiled by ``torch.compile`` (``torch.func.grad_and_value`` of the whole
learner through ``functional_call``): Inductor fuses the elementwise work of the inner gradients
and of their derivatives (batch norm, ReLU, pooling), which is about half of second-order MAML's
time in eager PyTorch on CPU. The returned loss hands the precomputed gradients to the parameters
when ``backward`` is called on it, so the Trainer's step, its task chunks and its gradient
clipping work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from kshot.errors import KShotError

NORMS = ("episode", "running")

Params = dict[str, torch.Tensor]


class TaskBatchNorm(nn.Module):
    """Batch norm written as plain tensor operations, with the parameter names of ``nn.BatchNorm``.

    It normalises by the statistics of its own input batch (inside ``vmap``: of one task's items),
    and by its running averages when ``use_running`` is set and the module is in eval mode. Running
    averages are updated only by :meth:`TaskModel.update_running`, outside any differentiated pass.
    The same arithmetic as ``F.batch_norm``; written out, its second derivative (second-order MAML
    differentiates through the inner gradient) costs about 1.3× less on CPU than the fused kernel's.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = source.eps
        self.momentum = source.momentum if source.momentum is not None else 0.1
        self.weight = source.weight
        self.bias = source.bias
        self.use_running = False
        self.updating = False
        self.register_buffer("running_mean", torch.zeros(source.num_features))
        self.register_buffer("running_var", torch.ones(source.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, centered = self._statistics(x)
        out = centered * self._scale(var, x.ndim)
        return out + self.bias.view(_channel_shape(x.ndim)) if self.bias is not None else out

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(var, x - mean)``, the variance shaped to broadcast over ``x``: by the running
        averages, or by the batch's own statistics (folded into the running averages when
        :meth:`TaskModel.update_running` asks)."""
        shape = _channel_shape(x.ndim)
        if self.use_running and not self.training:
            return self.running_var.view(shape), x - self.running_mean.view(shape)
        dims = [0] + list(range(2, x.ndim))  # every dimension but the channels
        count = x.numel() // x.shape[1]
        # Written for the cost of the first and second derivatives on CPU, each about 1.3× faster
        # to run than the obvious form: sums scaled afterwards (the gradient of a mean divides a
        # map of the input's size by the count; that of a sum scales the per-channel gradient and
        # broadcasts it), x + (-mean) (the gradient of a subtraction negates a map of the input's
        # size), and two passes rather than torch.var_mean (its one-pass kernel is several times
        # slower here).
        mean = x.sum(dims, keepdim=True) * (1.0 / count)
        centered = x + mean.neg()
        var = (centered * centered).sum(dims, keepdim=True) * (1.0 / count)
        if self.updating:
            with torch.no_grad():
                self.running_mean.lerp_(mean.flatten().to(self.running_mean.dtype), self.momentum)
                unbiased = var.flatten().to(self.running_var.dtype) * count / max(count - 1, 1)
                self.running_var.lerp_(unbiased, self.momentum)
        return var, centered

    def _scale(self, var: torch.Tensor, ndim: int) -> torch.Tensor:
        scale = torch.rsqrt(var + self.eps)
        return scale * self.weight.view(_channel_shape(ndim)) if self.weight is not None else scale


class TaskNormReluPool(TaskBatchNorm):
    """:class:`TaskBatchNorm`, ReLU and a max-pool in one module, pooling first: the same values
    and gradients (up to rounding) with the per-pixel work of the scaling, the offset and the ReLU
    done on the pooled map, a quarter of the size after a 2×2 pool.

    Exact because, channel by channel, the normalisation ``(x - μ) γ / σ + β`` is monotone
    (increasing where ``γ ≥ 0``, decreasing where ``γ < 0``) and so is the ReLU: the maximum of the
    normalised window is the normalised maximum of the window (``γ ≥ 0``) or of its minimum (``γ <
    0``, the max-pool of ``-x``, negated). The statistics are still those of the whole map.
    :class:`TaskModel` puts it in place of every BN → ReLU → max-pool run of layers (the ReLU and
    the pool become ``nn.Identity``): parameter and buffer names do not change, so a checkpoint
    loads either way. Second-order MAML on Conv4 runs up to 1.1× faster with it on CPU than with
    the plain layers (``benchmarks/maml_block_ab.py``, one thread, on a busy machine).
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, pool: nn.MaxPool2d) -> None:
        super().__init__(source)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, centered = self._statistics(x)
        if self.weight is None:
            pooled = self.pool(centered)
        else:  # +1 where the normalisation increases, -1 where it decreases: max- or min-pool
            sign = torch.where(self.weight.detach() >= 0, 1.0, -1.0).to(x.dtype)
            sign = sign.view(_channel_shape(x.ndim))
            pooled = self.pool(centered * sign) * sign
        out = pooled * self._scale(var, x.ndim)
        if self.bias is not None:
            out = out + self.bias.view(_channel_shape(x.ndim))
        return torch.relu(out)


def _channel_shape(ndim: int) -> tuple[int, ...]:
    return (-1,) + (1,) * (ndim - 2)


class UnfoldConv2d(nn.Module):
    """``nn.Conv2d`` with the same parameters (same names), computed in eval mode as unfold + one
    matrix product.

    For a convolution with few inputs per output (Conv4's first layer on grey images: 1 channel ×
    3 × 3 = 9), oneDNN's kernel runs far below the machine's arithmetic rate (on 2 cores, 160
    28×28 images into 64 channels: ~25 ms against ~4 ms as a product of the 9-column unfolded
    image with the weights); the output is laid out channels-last (a permuted view), which the
    next convolution reads as fast or faster. Scoring MAML 5-way 1-shot (a forward, an inner
    gradient and a forward with the adapted weights) runs about 1.3× faster with it on CPU. In
    training (second order: the products' own derivatives, reductions over every pixel) it was
    about 5% slower than oneDNN's convolution, so training mode calls ``F.conv2d``.
    :class:`TaskModel` puts it in place of every plain convolution (one group, zero padding) with
    at most :attr:`MAX_INPUTS` inputs per output.
    """

    MAX_INPUTS = 32

    def __init__(self, source: nn.Conv2d) -> None:
        super().__init__()
        self.weight = source.weight
        self.bias = source.bias
        self.in_channels, self.out_channels = source.in_channels, source.out_channels
        self.kernel_size = source.kernel_size
        self.stride = source.stride
        self.padding = source.padding
        self.dilation = source.dilation

    @classmethod
    def replaces(cls, module: nn.Module) -> bool:
        return (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)
                and module.weight[0].numel() <= cls.MAX_INPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        n, _, height, width = x.shape
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        out = columns.transpose(1, 2) @ self.weight.flatten(1).t()  # [N, positions, out]
        if self.bias is not None:
            out = out + self.bias
        rows, cols = (
            (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
            for size, pad, dil, kernel, stride in zip(
                (height, width), self.padding, self.dilation, self.kernel_size, self.stride))
        out = out.view(n, rows, cols, -1).permute(0, 3, 1, 2)
        return out[0] if unbatched else out


def _replace_norms(module: nn.Module, fuse: bool) -> None:
    """Every batch norm becomes a :class:`TaskBatchNorm`; with ``fuse``, one followed by a ReLU and
    a max-pool (in a ``Sequential``) a :class:`TaskNormReluPool`, the ReLU and the pool
    ``nn.Identity``, and a convolution with few inputs per output an :class:`UnfoldConv2d`."""
    if fuse and isinstance(module, nn.Sequential):
        layers = list(module)
        for index in range(len(layers) - 2):
            norm, relu, pool = layers[index:index + 3]
            if (isinstance(norm, nn.modules.batchnorm._BatchNorm) and type(relu) is nn.ReLU
                    and type(pool) is nn.MaxPool2d and not pool.return_indices):
                module[index] = TaskNormReluPool(norm, pool)
                module[index + 1], module[index + 2] = nn.Identity(), nn.Identity()
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, TaskBatchNorm(child))
        elif fuse and UnfoldConv2d.replaces(child):
            setattr(module, name, UnfoldConv2d(child))
        elif not isinstance(child, TaskBatchNorm):
            _replace_norms(child, fuse)


class TaskModel:
    """``module`` as ``model(params, x)``, vmapped over tasks; ``norm`` says how batch norm works.

    ``params`` maps each parameter name to a tensor with a leading task dimension (``[B, ...]``)
    or without one (shared by every task: the meta-learned initialisation). The module's batch-norm
    layers are replaced by :class:`TaskBatchNorm` (same parameters), which makes ``norm`` explicit;
    with ``fuse`` (the default) each BN → ReLU → max-pool run by a :class:`TaskNormReluPool`.
    """

    def __init__(self, module: nn.Module, norm: str = "episode", fuse: bool = True) -> None:
        _replace_norms(module, fuse)
        self.module = module
        self.norms = [m for m in module.modules() if isinstance(m, TaskBatchNorm)]
        self.norm = norm

    @property
    def norm(self) -> str:
        return self._norm

    @norm.setter
    def norm(self, norm: str) -> None:
        if norm not in NORMS:
            raise KShotError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self._norm = norm
        for layer in self.norms:
            layer.use_running = norm == "running"

    def parameters(self) -> Params:
        return dict(self.module.named_parameters())

    @torch.no_grad()
    def update_running(self, items: torch.Tensor) -> None:
        """Fold the batch statistics of ``module(items)`` (the current parameters, every task's
        items as one batch) into the running averages (nothing to do without batch norm)."""
        if self.norms:
            (self._compiled_update or self._update_running)(items)

    def compile_updates(self, enabled: bool) -> None:
        """Run :meth:`update_running` compiled with ``torch.compile`` (its statistics, ReLU and
        pooling fused: about 1.7× faster on Conv4 on CPU), or eager again."""
        if enabled and self._compiled is None:
            self._compiled = torch.compile(self._update_running)
        self._compiled_update = self._compiled if enabled else None

    _compiled_update = _compiled = None

    def _update_running(self, items: torch.Tensor) -> None:
        for layer in self.norms:
            layer.updating = True
        try:
            self.module(items)
        finally:
            for layer in self.norms:
                layer.updating = False

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """One task: ``x [items, ...]`` -> outputs (called inside :meth:`map`)."""
        return functional_call(self.module, params, (x,), strict=False)

    def map(self, fn: Callable, params: Params, *tasks: torch.Tensor,
            batched_params: bool = False):
        """``vmap(fn)(params, *tasks)`` over the leading task dimension of ``tasks``; ``fn(params,
        *task)`` calls ``self(params, x)``. ``params`` are per task when ``batched_params``."""
        dims = (0 if batched_params else None,) + (0,) * len(tasks)
        return vmap(fn, in_dims=dims, randomness="different")(params, *tasks)


def sgd_step(params: Params, grads: Params, lr: Params | float, first_order: bool) -> Params:
    """``θ - α ∇``; the gradient is detached when ``first_order`` (its own gradient is dropped)."""
    updated = {}
    for name, value in params.items():
        grad = grads[name].detach() if first_order else grads[name]
        rate = lr[name] if isinstance(lr, dict) else lr
        updated[name] = value - rate * grad
    return updated


class _WithGradients(torch.autograd.Function):
    """``value``, whose gradients for ``params`` were computed with it: ``backward`` hands them
    over, scaled by the incoming gradient (a task chunk's share, a loss scale)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple[torch.Tensor, ...],
                *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        grads, ctx.grads = ctx.grads, ()
        return (None, None, *(grad * upstream.to(grad.dtype) for grad in grads))


class _Method(nn.Module):
    """``module.<method>(*inputs)`` as a module call, so ``functional_call`` can swap the
    parameters of ``module`` (named ``module.<name>`` here) for the length of the call."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *inputs):
        return getattr(self.module, self.method)(*inputs)


class CompiledObjective:
    """``module.<method>(*inputs) -> (loss, aux)`` with the gradients of ``loss`` for every trainable
    parameter of ``module`` (those of submodules it calls, such as a learned inner loss, included),
    computed together by ``torch.func.grad_and_value`` and compiled with ``torch.compile``.

    Calling it returns ``(loss, aux)``: ``loss`` carries no graph, and ``loss.backward()`` adds the
    precomputed gradients to the parameters' ``.grad`` as autograd would (``aux`` must be detached
    values). The method must be a pure function of its inputs and the module's parameters: Python
    values it reads (step counts, flags) are baked into the compiled graph, and a new value compiles
    it again, so pass them as arguments that take few values. Nothing of it is saved with the
    module; construct it again after loading.
    """

    def __init__(self, module: nn.Module, method: str, compile: bool = True) -> None:
        self.module = module
        call = _Method(module, method)

        def pure(params: Params, *inputs):
            return functional_call(call, params, inputs, strict=False)

        function = grad_and_value(pure, has_aux=True)
        self.function = torch.compile(function, dynamic=False) if compile else function

    def __call__(self, *inputs):
        named = [(name, p) for name, p in self.module.named_parameters() if p.requires_grad]
        values = {f"module.{name}": p.detach() for name, p in named}
        grads, (value, aux) = self.function(values, *inputs)
        params = [p for _, p in named]
        ordered = tuple(grads[f"module.{name}"] for name, _ in named)
        return _WithGradients.apply(value, ordered, *params), aux


class CompiledTraining:
    """For a learner (an ``nn.Module``) with a pure ``meta_objective(*inputs) -> (loss, detached
    outputs)`` and a :class:`TaskModel` ``model``: :meth:`compile_training` (the Trainer calls it
    through ``kshot.nn.fast.compile_backbone``) trains through a :class:`CompiledObjective` of it
    and updates batch norm's running averages compiled; :meth:`training_objective` runs the
    compiled objective when that is on, in training, with autograd recording, and the eager
    method otherwise. The compiled objective is kept across runs (compiling again costs seconds
    to minutes), switched off by :meth:`uncompile_training`."""

    _objective: CompiledObjective | None = None
    _compiled: CompiledObjective | None = None

    def compile_training(self, enabled: bool) -> bool:
        if enabled and self._compiled is None:
            self._compiled = CompiledObjective(self, "meta_objective")
        self._objective = self._compiled if enabled else None
        self.model.compile_updates(enabled)
        return enabled

    def uncompile_training(self) -> None:
        self._objective = None
        self.model.compile_updates(False)

    def training_objective(self, *inputs):
        if self._objective is not None and self.training and torch.is_grad_enabled():
            return self._objective(*inputs)
        return self.meta_objective(*inputs)
