"""Compiled (training) and fused (inference) backbones agree with eager PyTorch (kshot.nn.fast)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from kshot.data.dataset import ClassDataset
from kshot.data.episodes import EpisodeSampler
from kshot.errors import KShotError
from kshot.evaluate import evaluate
from kshot.methods import build_learner
from kshot.nn.backbones import Conv4, LeNet
from kshot.nn.fast import compile_backbone, fast_inference, inference_backbone
from kshot.train import TrainConfig, Trainer


def _randomised_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking batch-norm statistics and affine weights."""
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return module.eval()


@pytest.mark.parametrize("backbone", [Conv4(hidden=16), LeNet()])
def test_inference_backbone_matches_eager(backbone: torch.nn.Module) -> None:
    backbone = _randomised_batch_norm(backbone)
    images = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fused = inference_backbone(backbone)
    assert fused is not backbone  # it really is another (frozen) module
    with torch.inference_mode():
        expected, got = backbone(images), fused(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # freezing copied the weights: changing the module later does not change the frozen copy
    backbone.features[0].weight.data.zero_()
    with torch.inference_mode():
        assert not torch.allclose(backbone(images), got)


def _dataset(n_classes: int = 12) -> ClassDataset:
    generator = torch.Generator().manual_seed(2)
    prototypes = torch.rand(n_classes, 1, 28, 28, generator=generator)
    noise = torch.rand(n_classes, 10, 1, 28, 28, generator=generator) * 0.5
    images = ((prototypes[:, None] + noise).clamp(0, 1) * 255).to(torch.uint8).flatten(0, 1)
    labels = torch.arange(n_classes).repeat_interleave(10)
    dataset = ClassDataset.from_labels(images, labels, name="synthetic")
    dataset.meta["namespace"] = "synthetic"
    return dataset


def test_fast_evaluation_scores_the_same_episodes_alike() -> None:
    torch.manual_seed(0)
    learner = build_learner("protonet", {"hidden": 16}, (1, 28, 28))
    dataset = _dataset()
    with torch.no_grad():  # batch-norm statistics of the data, as after training
        for layer in learner.backbone.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.momentum = None
        learner.backbone.train()(dataset.to_float(dataset.images))
    learner.eval()
    sampler = EpisodeSampler(dataset, 5, 1, 5, seed=3)
    batch = sampler.batch(range(8))
    with torch.inference_mode():
        logits = learner(batch.support_x, batch.support_y, batch.query_x)
        with fast_inference(learner, True):
            fast_logits = learner(batch.support_x, batch.support_y, batch.query_x)
    assert logits.std() > 0.1  # real margins, not an embedding collapsed to ties
    torch.testing.assert_close(fast_logits, logits, rtol=1e-4, atol=1e-3)
    eager = evaluate(learner, sampler, 40, batch_size=8, fast=False)
    fast = evaluate(learner, sampler, 40, batch_size=8, fast=True)
    assert torch.equal(eager.per_episode, fast.per_episode)
    # the trained module is back in place afterwards, still trainable
    assert isinstance(learner.backbone, Conv4)
    assert all(p.requires_grad for p in learner.backbone.parameters())


def test_fast_inference_restores_the_backbone_on_error() -> None:
    learner = build_learner("protonet", {"hidden": 8}, (1, 28, 28))
    original = learner.backbone
    with pytest.raises(RuntimeError, match="boom"), fast_inference(learner, True):
        assert learner.backbone is not original
        raise RuntimeError("boom")
    assert learner.backbone is original


def test_compiled_training_matches_eager(tmp_path) -> None:
    torch.manual_seed(0)
    eager = build_learner("protonet", {"hidden": 8}, (1, 28, 28))
    compiled = copy.deepcopy(eager)
    sampler = EpisodeSampler(_dataset(), 5, 1, 3, seed=0)
    batch = sampler.batch([0, 1])
    assert compile_backbone(compiled, True)
    losses = []
    for learner in (eager, compiled):
        learner.train()
        loss, _ = learner.loss(batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        # (a conv bias before batch norm has a zero gradient: only float noise, hence atol)
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-3, atol=1e-4, msg=name)
    # batch-norm running statistics were updated the same way
    torch.testing.assert_close(compiled.backbone.features[1].running_mean,
                               eager.backbone.features[1].running_mean, rtol=1e-4, atol=1e-6)


def test_trainer_falls_back_to_eager_when_the_compiled_step_fails(tmp_path, monkeypatch) -> None:
    class FakeInductorError(RuntimeError):
        pass

    FakeInductorError.__module__ = "torch._inductor.exc"

    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise FakeInductorError("no C++ compiler")

        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    torch.manual_seed(0)
    learner = build_learner("protonet", {"hidden": 8}, (1, 28, 28))
    config = TrainConfig(episodes=3, ways=5, shots=1, queries=2, val_episodes=0)
    trainer = Trainer(learner, config, tmp_path, _dataset(), progress=False, compile=True)
    with pytest.warns(RuntimeWarning, match="training in eager mode"):
        summary = trainer.fit()
    assert summary["finished"] and summary["step"] == 3
    assert learner.backbone._compiled_call_impl is None


def test_bf16_mixed_precision_training_follows_fp32(tmp_path) -> None:
    """TrainConfig(precision="bf16") runs the learner's loss under bfloat16 autocast: the weights and
    the optimiser stay float32, the losses follow the float32 run from the same start closely, and
    the model learns as much."""
    dataset = _dataset()
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        learner = build_learner("protonet", {"hidden": 16}, (1, 28, 28))
        config = TrainConfig(episodes=40, ways=5, shots=1, queries=3, val_episodes=0,
                             log_every=10, precision=precision)
        Trainer(learner, config, tmp_path / precision, dataset, progress=False,
                compile=False).fit()
        assert all(p.dtype == torch.float32 for p in learner.parameters())
        losses = [json.loads(line)["loss"] for line in
                  (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        report = evaluate(learner, EpisodeSampler(dataset, 5, 1, 3, seed=5), 50, fast=False)
        results[precision] = (losses, report.accuracy)
    (fp32_losses, fp32_accuracy), (bf16_losses, bf16_accuracy) = results["fp32"], results["bf16"]
    assert bf16_losses[-1] < bf16_losses[0]  # it learns
    assert abs(bf16_losses[0] - fp32_losses[0]) < 0.05 * fp32_losses[0] + 0.02
    assert bf16_accuracy >= fp32_accuracy - 0.05
    with pytest.raises(KShotError, match="--precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")
