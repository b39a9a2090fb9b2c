"""``kshot.nn.functional``: the fused batch norm → ReLU → max-pool block gives the plain layers'
values, gradients and second derivatives (float64, batch-norm scales of both signs), in both
``norm`` modes, with the same running averages and the same parameter names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import grad

from kshot.nn.functional import TaskBatchNorm, TaskModel, TaskNormReluPool, UnfoldConv2d, sgd_step


def _net(pool: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                         pool or nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))


def _model(net: nn.Sequential, norm: str, fuse: bool) -> TaskModel:
    """``net`` as a float64 TaskModel whose norms have scales of both signs, offsets and running
    statistics (the same for every call)."""
    model = TaskModel(net, norm, fuse=fuse)
    model.module.double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.norms:
            layer.weight.copy_(torch.tensor([1.5, -0.7, 0.3, -2.0, -0.1, 1.0]))
            layer.bias.normal_(0, 0.5, generator=generator)
            layer.running_mean.normal_(0, 0.3, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def _pair(pool: nn.Module | None = None, norm: str = "episode") -> tuple[TaskModel, TaskModel]:
    net = _net(pool)
    return _model(copy.deepcopy(net), norm, fuse=False), _model(net, norm, fuse=True)


def _tasks(n_tasks: int = 3, items: int = 4, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n_tasks, items, 1, side, side, generator=generator, dtype=torch.float64)
    x[:, :, :, :2, :2] = 0.25  # a tied window in every map
    return x, torch.arange(items).remainder(3).expand(n_tasks, -1)


def _meta_loss(model: TaskModel, first_order: bool = False) -> torch.Tensor:
    """One inner step on each task's items, the loss after it: values, first and second
    derivatives of the block all enter the meta-gradient."""
    x, y = _tasks()

    def task(params, tx, ty):
        def loss(p):
            return nn.functional.cross_entropy(model(p, tx), ty)
        adapted = sgd_step(params, grad(loss)(params), 0.3, first_order)
        return nn.functional.cross_entropy(model(adapted, tx), ty)

    return model.map(task, model.parameters(), x, y).sum()


def test_only_norm_relu_pool_runs_are_fused_and_names_do_not_change() -> None:
    plain, fused = _pair()
    assert [type(m) for m in fused.module][1:4] == [TaskNormReluPool, nn.Identity, nn.Identity]
    assert [type(m) for m in plain.module][1:4] == [TaskBatchNorm, nn.ReLU, nn.MaxPool2d]
    assert len(fused.norms) == len(plain.norms) == 2
    assert list(fused.module.state_dict()) == list(plain.module.state_dict())
    fused.module.load_state_dict(plain.module.state_dict())  # a checkpoint loads either way
    # a norm without a following ReLU and max-pool stays as it is (the convolution of 9 inputs
    # per output is unfolded: kshot.nn.functional.UnfoldConv2d)
    lone = TaskModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.MaxPool2d(2)))
    assert [type(m) for m in lone.module] == [UnfoldConv2d, TaskBatchNorm, nn.MaxPool2d]


@pytest.mark.parametrize("pool", [None, nn.MaxPool2d(3, stride=2, padding=1)])
def test_fused_block_gives_the_same_values_and_meta_gradients(pool) -> None:
    """Four of the six scales are negative: their windows must be min-pooled to agree."""
    plain, fused = _pair(pool)
    x, _ = _tasks()
    assert torch.allclose(plain.map(plain, plain.parameters(), x),
                          fused.map(fused, fused.parameters(), x), atol=1e-12)
    for first_order in (False, True):
        names = list(plain.parameters())
        expected = torch.autograd.grad(_meta_loss(plain, first_order),
                                       list(plain.parameters().values()))
        got = torch.autograd.grad(_meta_loss(fused, first_order), list(fused.parameters().values()))
        for name, a, b in zip(names, expected, got):
            assert torch.allclose(a, b, atol=1e-10), name


def test_fused_block_with_running_statistics() -> None:
    plain, fused = _pair(norm="running")
    plain.module.eval()
    fused.module.eval()
    x, _ = _tasks()
    assert torch.allclose(plain.map(plain, plain.parameters(), x),
                          fused.map(fused, fused.parameters(), x), atol=1e-12)
    plain.module.train()
    fused.module.train()  # training always normalises by the batch
    assert torch.allclose(plain.map(plain, plain.parameters(), x),
                          fused.map(fused, fused.parameters(), x), atol=1e-12)


def test_fused_block_updates_the_running_averages_alike() -> None:
    plain, fused = _pair()
    x, _ = _tasks()
    plain.update_running(x.flatten(0, 1))
    fused.update_running(x.flatten(0, 1))
    for a, b in zip(plain.norms, fused.norms):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-12)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-12)
    assert not torch.allclose(plain.norms[0].running_mean, _pair()[0].norms[0].running_mean)


def test_running_averages_keep_their_dtype_under_bf16_autocast() -> None:
    """Mixed-precision training (``--precision bf16``) hands batch norm bfloat16 activations: the
    float32 running averages take their statistics (it failed in ``lerp_``) and stay float32."""
    model = TaskModel(_net(), "episode")
    before = [layer.running_mean.clone() for layer in model.norms]
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.update_running(x)
    for layer, old in zip(model.norms, before):
        assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32
        assert not torch.equal(layer.running_mean, old)
        assert torch.isfinite(layer.running_var).all()
