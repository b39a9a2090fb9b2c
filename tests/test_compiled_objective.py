"""Compiled meta-objectives (kshot.nn.functional.CompiledObjective) give the gradients of eager
autograd; the unfolded convolution computes the convolution; compiled running-average updates are
the eager ones; a compiled step that fails falls back to eager training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kshot.data.episodes import Episode
from kshot.methods import build_learner
from kshot.nn.fast import compile_backbone, uncompile_backbone
from kshot.nn.functional import CompiledObjective, TaskModel, UnfoldConv2d
from kshot.tasks import SinusoidTasks
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _sinusoids(tasks: int = 4, k_shot: int = 5, seed: int = 1) -> Episode:
    return SinusoidTasks().sampler(k_shot, 10, seed=seed).batch(range(tasks))


def _gradients(learner: nn.Module, episode: Episode) -> tuple[float, dict[str, float], dict]:
    learner.zero_grad(set_to_none=True)
    loss, metrics = learner.loss(episode)
    loss.backward()
    return float(loss.detach()), metrics, {n: p.grad.clone() for n, p in learner.named_parameters()}


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.frozen = nn.Parameter(torch.tensor(3.0), requires_grad=False)

    def objective(self, x: torch.Tensor, scale: float):
        value = scale * ((self.weight * x).sum() ** 2) + self.frozen
        return value, (self.weight * x).detach()


@pytest.mark.parametrize("compiled", [False, True])
def test_objective_hands_autograds_gradients_to_the_parameters(compiled: bool) -> None:
    """The value, its gradient (scaled by what flows into backward, accumulated over calls), and
    nothing for a frozen parameter; ``aux`` is returned as computed."""
    module = _Quadratic()
    x = torch.tensor([0.5, 1.0, 2.0])
    objective = CompiledObjective(module, "objective", compile=compiled)
    value, aux = objective(x, 2.0)
    assert value.requires_grad and value.grad_fn is not None
    expected = 2.0 * float((module.weight.detach() * x).sum()) ** 2 + 3.0
    assert float(value.detach()) == pytest.approx(expected)
    torch.testing.assert_close(aux, module.weight.detach() * x)
    (value * 0.5).backward()
    inner = float((module.weight.detach() * x).sum())
    torch.testing.assert_close(module.weight.grad, 0.5 * 2.0 * 2 * inner * x)
    objective(x, 2.0)[0].backward()  # accumulates, as autograd would
    torch.testing.assert_close(module.weight.grad, 1.5 * 2.0 * 2 * inner * x)
    assert module.frozen.grad is None


@pytest.mark.parametrize("method, options", [
    ("maml", {}),
    ("maml", {"meta_sgd": True, "inner_steps": 2}),
    ("maml", {"first_order": True}),
    ("daml", {}),
])
def test_compiled_training_gives_the_eager_meta_gradient(method: str, options: dict) -> None:
    """Second and first order, Meta-SGD's learned rates and DAML's learned adaptation loss (a
    module the objective calls): every parameter's gradient as eager autograd computes it."""
    torch.manual_seed(0)
    eager = build_learner(method, options, (1,))
    compiled = copy.deepcopy(eager)
    assert compile_backbone(compiled, True)
    episode = _sinusoids()
    if method == "daml":  # DAML adapts on observations; the sampler's targets stand in for them
        episode = Episode(episode.support_x, episode.support_y.neg(), episode.query_x,
                          episode.query_y, episode.n_way, episode.k_shot)
    eager.train()
    compiled.train()
    loss_e, metrics_e, grads_e = _gradients(eager, episode)
    loss_c, metrics_c, grads_c = _gradients(compiled, episode)
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    assert metrics_c == pytest.approx(metrics_e, rel=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)
    if options.get("meta_sgd") or method == "daml":  # the learned parts do get gradients
        learned = [n for n in grads_e if n.startswith(("inner_rates", "adaptation_loss"))]
        assert learned and all(grads_c[n].abs().sum() > 0 for n in learned)
    uncompile_backbone(compiled)
    assert compiled._objective is None and compiled._compiled is not None  # kept for next time
    assert compile_backbone(compiled, True) and compiled._objective is compiled._compiled


def test_the_jointly_trained_baseline_trains_eager() -> None:
    """It has no inner loop for a compiled objective to fuse."""
    learner = build_learner("pretrained", {}, (1,))
    assert not compile_backbone(learner, True)
    assert learner._objective is None


def _images(tasks: int, seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(5).expand(tasks, -1).clone()
    return Episode(torch.rand(tasks, 5, 1, 16, 16, generator=generator), labels,
                   torch.rand(tasks, 5, 1, 16, 16, generator=generator), labels.clone(), 5, 1)


@pytest.mark.slow  # compiling second-order Conv4 takes over a minute on 2 cores
@pytest.mark.parametrize("method", ["maml", "meta-lstm"])
def test_compiled_conv4_training_matches_eager_and_its_running_averages(method: str) -> None:
    """Conv4 with batch norm (MAML second order; the LSTM meta-learner's updates): the compiled
    objective's gradients and the compiled running-average update agree with eager PyTorch
    (random images: no max-pool ties, where either may pick another valid subgradient)."""
    torch.manual_seed(0)
    eager = build_learner(method, {"n_way": 5, "hidden": 4}, (1, 16, 16))
    compiled = copy.deepcopy(eager)
    assert compile_backbone(compiled, True)
    eager.train()
    compiled.train()
    episode = _images(3)
    loss_e, _, grads_e = _gradients(eager, episode)
    loss_c, _, grads_c = _gradients(compiled, episode)
    assert loss_c == pytest.approx(loss_e, rel=1e-4)
    flat_e = torch.cat([g.flatten() for n, g in grads_e.items() if not _conv_bias(n)])
    flat_c = torch.cat([g.flatten() for n, g in grads_c.items() if not _conv_bias(n)])
    assert float((flat_c - flat_e).norm() / flat_e.norm()) < 1e-3
    for a, b in zip(compiled.model.norms, eager.model.norms):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-4, atol=1e-6)
    assert not torch.equal(eager.model.norms[0].running_mean, torch.zeros(4))


def _conv_bias(name: str) -> bool:
    """A convolution's bias before batch norm: a zero gradient, float noise either way."""
    return name.endswith("bias") and name.count(".") == 3 and int(name.split(".")[2]) % 4 == 0


def test_a_failing_compiled_step_trains_eager(tmp_path, monkeypatch) -> None:
    class FakeInductorError(RuntimeError):
        pass

    FakeInductorError.__module__ = "torch._inductor.exc"

    def fail(self, *inputs):
        raise FakeInductorError("no C++ compiler")

    monkeypatch.setattr(CompiledObjective, "__call__", fail)
    torch.manual_seed(0)
    learner = build_learner("maml", {}, (1,))
    config = TrainConfig(episodes=6, ways=1, shots=5, queries=10, meta_batch=2, val_episodes=0)
    tasks = SinusoidTasks()
    trainer = Trainer(learner, config, tmp_path, tasks, progress=False, compile=True)
    with pytest.warns(RuntimeWarning, match="training in eager mode"):
        summary = trainer.fit()
    assert summary["finished"] and summary["step"] == 3
    assert learner._objective is None


# --- the unfolded convolution --------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {"padding": 1},
    {"padding": 2, "stride": 2},
    {"padding": (1, 0), "dilation": 2, "bias": False},
])
def test_unfolded_convolution_is_the_convolution(options: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 7, 3, **options).double()
    unfolded = UnfoldConv2d(conv).eval()
    x = torch.randn(4, 2, 11, 13, dtype=torch.double, requires_grad=True)
    expected, got = conv(x), unfolded(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(unfolded(x[0]), conv(x[0]))  # an unbatched image
    # the same gradients, for the input and for the (shared) weights
    upstream = torch.randn_like(expected)
    grads_e = torch.autograd.grad(expected, (x, conv.weight), upstream)
    grads_u = torch.autograd.grad(got, (x, unfolded.weight), upstream)
    for a, b in zip(grads_u, grads_e):
        torch.testing.assert_close(a, b)
    assert unfolded.weight is conv.weight


def test_task_model_unfolds_only_convolutions_with_few_inputs() -> None:
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten())
    names = [name for name, _ in net.named_parameters()]
    model = TaskModel(net)
    assert type(net[0]) is UnfoldConv2d and type(net[4]) is nn.Conv2d  # 9 inputs; 72 inputs
    assert [name for name, _ in net.named_parameters()] == names  # checkpoints load either way
    x = torch.rand(2, 6, 1, 8, 8)
    reference = TaskModel(copy.deepcopy(net), fuse=False)
    reference.module.load_state_dict(net.state_dict())
    for mode in (True, False):
        net.train(mode)
        reference.module.train(mode)
        got = model.map(model, model.parameters(), x)
        expected = reference.map(reference, reference.parameters(), x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_compiled_running_average_updates_are_the_eager_ones() -> None:
    """One conv / batch norm / ReLU / max-pool block: ``update_running`` compiled and eager fold
    the same statistics into the running averages."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten())
    eager, compiled = TaskModel(net), TaskModel(copy.deepcopy(net))
    compiled.compile_updates(True)
    items = torch.rand(10, 1, 8, 8)
    for _ in range(2):
        eager.update_running(items)
        compiled.update_running(items)
    a, b = eager.norms[0], compiled.norms[0]
    assert not torch.equal(a.running_mean, torch.zeros(6))
    torch.testing.assert_close(b.running_mean, a.running_mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b.running_var, a.running_var, rtol=1e-5, atol=1e-7)
    assert not b.updating  # the layers are left as they were
    compiled.compile_updates(False)
    assert compiled._compiled_update is None and compiled._compiled is not None
