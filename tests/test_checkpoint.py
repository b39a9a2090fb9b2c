"""kshot.checkpoint (safetensors + JSON, run directories) and kshot.train (the Trainer).

Trainer tests use tiny synthetic data sets (random 16x16 images) and a conv4 of 8 channels, so
each trains in well under a second.
"""

from __future__ import annotations

import json
import math
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kshot import __version__
from kshot.checkpoint import (
    learner_state,
    load_checkpoint,
    load_learner_state,
    load_run,
    read_run_config,
    save_checkpoint,
    write_run_config,
)
from kshot.data.dataset import ClassDataset
from kshot.errors import KShotError
from kshot.methods import build_learner
from kshot.methods.protonet import ProtoNetConfig
from kshot.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _tmp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(".tmp-")]


# --- save_checkpoint / load_checkpoint ---------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    tensors = {
        "model.weight": torch.randn(3, 4),
        "model.transposed": torch.randn(4, 5).t(),  # not contiguous: saved contiguous
        "model.count": torch.tensor(7, dtype=torch.int64),
        "rng": torch.randint(0, 255, (16,), dtype=torch.uint8),
    }
    metadata = {"method": "protonet", "step": 12, "nested": {"lr": 0.001, "names": ["a", "b"]},
                "finished": False}
    path = save_checkpoint(tmp_path, "best", tensors, metadata)
    assert path == tmp_path / "best.safetensors"
    loaded, loaded_metadata = load_checkpoint(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name
    assert loaded_metadata == {**metadata, "kshot_version": __version__}
    # the readable copy beside it says the same
    assert json.loads((tmp_path / "best.json").read_text()) == loaded_metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
    assert _tmp_files(tmp_path) == []


def test_checkpoint_overwrite_replaces(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "last", {"x": torch.zeros(2)}, {"step": 1})
    save_checkpoint(tmp_path, "last", {"x": torch.ones(2)}, {"step": 2})
    tensors, metadata = load_checkpoint(tmp_path / "last.safetensors")
    assert torch.equal(tensors["x"], torch.ones(2)) and metadata["step"] == 2
    assert _tmp_files(tmp_path) == []


def test_checkpoint_creates_run_dir(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "new" / "run", "best", {"x": torch.zeros(1)}, {})
    assert (tmp_path / "new" / "run" / "best.safetensors").is_file()


@pytest.mark.parametrize("damage", ["half", "header", "garbage", "empty"])
def test_damaged_checkpoint_raises(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path, "best", {"x": torch.arange(1000.0)}, {"step": 1})
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "header": data[:40],
                      "garbage": b"\x00\xffnot a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(KShotError, match="not a readable kshot checkpoint"):
        load_checkpoint(path)


def test_foreign_safetensors_without_metadata_raises(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(KShotError, match="not a readable kshot checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(KShotError, match="does not exist"):
        load_checkpoint(tmp_path / "best.safetensors")


# --- load_learner_state / load_run -------------------------------------------------------------

ITEM_SHAPE = (1, 16, 16)


def _protonet(hidden: int = 8) -> torch.nn.Module:
    return build_learner("protonet", {"hidden": hidden}, ITEM_SHAPE)


def test_load_learner_state_round_trip() -> None:
    torch.manual_seed(0)
    source, target = _protonet(), _protonet()
    load_learner_state(target, learner_state(source), "memory")
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_learner_state_wrong_shapes() -> None:
    with pytest.raises(KShotError, match="does not match its config.*shape differs"):
        load_learner_state(_protonet(16), learner_state(_protonet(8)), "ckpt")


def test_load_learner_state_missing_and_unexpected_keys() -> None:
    state = learner_state(_protonet())
    missing = dict(state)
    del missing["model.backbone.features.0.weight"]
    with pytest.raises(KShotError, match="does not match its config.*missing"):
        load_learner_state(_protonet(), missing, "ckpt")
    extra = {**state, "model.head.weight": torch.zeros(3)}
    with pytest.raises(KShotError, match="does not match its config.*unexpected"):
        load_learner_state(_protonet(), extra, "ckpt")


def _write_run(run_dir: Path, learner: torch.nn.Module, method: str = "protonet",
               checkpoint_method: str = "protonet", stem: str = "best") -> None:
    write_run_config(run_dir, {"method": method, "method_config": asdict(learner.config),
                               "train_config": asdict(TrainConfig()),
                               "data": {"dataset": "synthetic", "item_shape": list(ITEM_SHAPE)}})
    save_checkpoint(run_dir, stem, learner_state(learner), {"method": checkpoint_method})


def test_load_run_rebuilds_learner(tmp_path: Path) -> None:
    torch.manual_seed(1)
    learner = build_learner("protonet", asdict(ProtoNetConfig(hidden=8)), ITEM_SHAPE)
    _write_run(tmp_path, learner)
    loaded, run_config, metadata = load_run(tmp_path, method="protonet")
    assert run_config["method"] == "protonet" and run_config["kshot_version"] == __version__
    assert read_run_config(tmp_path) == run_config
    assert metadata["method"] == "protonet"
    assert not loaded.training
    assert loaded.config == learner.config and loaded.item_shape == ITEM_SHAPE
    for (name, a), b in zip(learner.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_run_falls_back_to_last(tmp_path: Path) -> None:
    _write_run(tmp_path, _protonet(), stem="last")
    loaded, _, _ = load_run(tmp_path)
    assert loaded.name == "protonet"


def test_load_run_without_config_raises(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "best", learner_state(_protonet()), {"method": "protonet"})
    with pytest.raises(KShotError, match="not a kshot run directory"):
        load_run(tmp_path)


def test_load_run_unreadable_config_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(KShotError, match="unreadable"):
        load_run(tmp_path)


def test_load_run_of_another_method_raises(tmp_path: Path) -> None:
    _write_run(tmp_path, _protonet())
    with pytest.raises(KShotError, match="'protonet' run, not 'knn'"):
        load_run(tmp_path, method="knn")


def test_load_run_checkpoint_of_another_method_raises(tmp_path: Path) -> None:
    _write_run(tmp_path, _protonet(), checkpoint_method="knn")
    with pytest.raises(KShotError, match="'knn' checkpoint"):
        load_run(tmp_path)


def test_load_run_edited_config_raises(tmp_path: Path) -> None:
    _write_run(tmp_path, _protonet(8))
    config = json.loads((tmp_path / "config.json").read_text())
    config["method_config"]["hidden"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KShotError, match="does not match its config"):
        load_run(tmp_path)


# --- Trainer -----------------------------------------------------------------------------------


def _synthetic(n_classes: int, per_class: int, seed: int, name: str) -> ClassDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_classes * per_class, 1, 16, 16), dtype=torch.uint8,
                           generator=generator)
    labels = torch.arange(n_classes).repeat(per_class)  # interleaved: from_labels sorts them
    return ClassDataset.from_labels(images, labels, name=name)


@pytest.fixture(scope="module")
def train_data() -> ClassDataset:
    return _synthetic(12, 6, seed=0, name="synthetic-train")


@pytest.fixture(scope="module")
def val_data() -> ClassDataset:
    return _synthetic(5, 6, seed=1, name="synthetic-val")


def _config(**changes) -> TrainConfig:
    values = {"episodes": 12, "ways": 3, "shots": 1, "queries": 2, "meta_batch": 1, "lr": 1e-2,
              "schedule": "step", "decay_every": 4, "lr_decay": 0.5, "val_every": 3,
              "val_episodes": 4, "val_ways": 3, "val_shots": 1, "val_queries": 2, "log_every": 2,
              "checkpoint_every_s": 1e9, "seed": 3}
    return TrainConfig(**{**values, **changes})


def _trainer(run_dir: Path, train_data: ClassDataset, val_data: ClassDataset | None,
             init_seed: int = 0, **changes) -> Trainer:
    torch.manual_seed(init_seed)
    learner = build_learner("protonet", {"hidden": 8}, ITEM_SHAPE)
    return Trainer(learner, _config(**changes), run_dir, train_data, val_data, progress=False)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in trainer.learner.state_dict().items()}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, train_data, val_data) -> tuple[Path, dict, dict]:
    """12 steps without interruption: (run dir, final weights, fit summary)."""
    run_dir = tmp_path_factory.mktemp("straight")
    trainer = _trainer(run_dir, train_data, val_data)
    summary = trainer.fit()
    return run_dir, _weights(trainer), summary


def test_trainer_writes_run_files(straight_run) -> None:
    run_dir, _, summary = straight_run
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.json", "best.safetensors", "classes.json", "last.json", "last.safetensors",
        "metrics.jsonl"]
    assert summary["finished"] and summary["step"] == 12 and summary["episodes"] == 12
    last = json.loads((run_dir / "last.json").read_text())
    assert last["finished"] is True and last["step"] == 12 and last["method"] == "protonet"
    assert last["kshot_version"] == __version__
    assert last["train_config"]["episodes"] == 12
    best = json.loads((run_dir / "best.json").read_text())
    assert best["method"] == "protonet" and 0.0 <= best["val_accuracy"] <= 1.0
    assert best["val_accuracy"] == pytest.approx(last["best_accuracy"])
    tensors, _ = load_checkpoint(run_dir / "last.safetensors")
    assert any(name.startswith("optim.") for name in tensors) and "rng.torch" in tensors
    best_tensors, _ = load_checkpoint(run_dir / "best.safetensors")
    assert all(name.startswith("model.") for name in best_tensors)


def test_trainer_metrics_file(straight_run) -> None:
    run_dir, _, _ = straight_run
    records = _metrics(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert len(train) + len(val) == len(records)
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]  # log_every 2
    assert [r["step"] for r in val] == [3, 6, 9, 12]  # val_every 3
    for kind in (train, val):
        episodes = [r["episodes"] for r in kind]
        assert episodes == sorted(episodes) and len(set(episodes)) == len(episodes)
        seconds = [r["seconds"] for r in kind]
        assert seconds == sorted(seconds)
    assert [r["episodes"] for r in records] == sorted(r["episodes"] for r in records)
    for record in train:
        assert set(record) >= {"step", "episodes", "seconds", "loss", "accuracy", "lr"}
        assert math.isfinite(record["loss"]) and 0 <= record["accuracy"] <= 1
    # lr logged is the rate of the window's last step (0-based step s uses 1e-2 * 0.5 ** (s // 4))
    assert [r["lr"] for r in train] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3])
    for record in val:
        assert 0 <= record["accuracy"] <= 1 and record["ci95"] >= 0


def test_training_changes_weights(straight_run, train_data) -> None:
    _, weights, _ = straight_run
    torch.manual_seed(0)
    initial = build_learner("protonet", {"hidden": 8}, ITEM_SHAPE).state_dict()
    assert not torch.equal(initial["backbone.features.0.weight"],
                           weights["backbone.features.0.weight"])


def test_learning_rate_schedules(tmp_path: Path, train_data) -> None:
    step = _trainer(tmp_path, train_data, None, lr=0.1, schedule="step", decay_every=4,
                    lr_decay=0.5)
    assert [step.learning_rate(s) for s in (0, 3, 4, 7, 8, 12)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])
    batched = _trainer(tmp_path, train_data, None, lr=0.1, schedule="step", decay_every=4,
                       lr_decay=0.5, meta_batch=2)
    assert batched.total_steps == 6
    # meta_batch 2: step s has seen 2s episodes
    assert [batched.learning_rate(s) for s in (0, 1, 2, 3, 4)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025])
    cosine = _trainer(tmp_path, train_data, None, lr=0.1, schedule="cosine", episodes=10)
    assert [cosine.learning_rate(s) for s in (0, 5, 10, 20)] == pytest.approx(
        [0.1, 0.05, 0.0, 0.0], abs=1e-12)
    assert cosine.learning_rate(2) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    constant = _trainer(tmp_path, train_data, None, lr=0.1, schedule="constant")
    assert [constant.learning_rate(s) for s in (0, 6, 10_000)] == [0.1, 0.1, 0.1]
    with pytest.raises(KShotError, match="--schedule must be one of step, cosine, constant"):
        _trainer(tmp_path, train_data, None, schedule="linear")  # refused where the config is built


def test_bad_episode_shape_raises_before_writing(tmp_path: Path, train_data, val_data) -> None:
    with pytest.raises(KShotError, match="larger than the 12 classes"):
        _trainer(tmp_path / "run", train_data, val_data, ways=13)
    with pytest.raises(KShotError, match="lower --shots or --queries"):
        _trainer(tmp_path / "run", train_data, val_data, shots=3, queries=4)
    with pytest.raises(KShotError, match="larger than the 5 classes"):
        _trainer(tmp_path / "run", train_data, val_data, val_ways=6)
    assert not (tmp_path / "run").exists()


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.allclose(tensor.double(), b[name].double(), rtol=0, atol=1e-6), name


def _assert_no_duplicate_steps(run_dir: Path, straight_dir: Path,
                               partial_window: tuple[str, int] | None = None) -> None:
    records = _metrics(run_dir)
    keys = [(r["kind"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    assert keys == [(r["kind"], r["step"]) for r in _metrics(straight_dir)]
    # the resumed run saw the same episodes, so it logged the same losses and accuracies, except
    # for a train line whose averaging window the interruption cut (only its resumed part counts)
    def values(rows: list[dict]) -> list[float]:
        return [r.get("loss", r["accuracy"]) for r in rows if (r["kind"], r["step"]) != partial_window]

    assert values(records) == pytest.approx(values(_metrics(straight_dir)), abs=1e-5)


def test_resume_is_exact(tmp_path: Path, straight_run, train_data, val_data) -> None:
    straight_dir, straight_weights, _ = straight_run
    first = _trainer(tmp_path, train_data, val_data, episodes=6)
    assert first.fit()["finished"]
    assert json.loads((tmp_path / "last.json").read_text())["step"] == 6
    # a new process: other initial weights, which resume must replace
    second = _trainer(tmp_path, train_data, val_data, init_seed=99, episodes=12)
    summary = second.fit(resume=True)
    assert summary["finished"] and summary["step"] == 12
    _assert_same_weights(_weights(second), straight_weights)
    _assert_no_duplicate_steps(tmp_path, straight_dir)
    assert _tmp_files(tmp_path) == []


def test_stop_signal_then_resume(tmp_path: Path, straight_run, train_data, val_data) -> None:
    straight_dir, straight_weights, _ = straight_run
    trainer = _trainer(tmp_path, train_data, val_data)
    original_loss = trainer.learner.loss
    calls = []

    def loss_then_signal(episode):
        calls.append(1)
        if len(calls) == 5:  # as if SIGTERM arrived during step 5
            trainer._on_signal(signal.SIGTERM, None)
        return original_loss(episode)

    trainer.learner.loss = loss_then_signal
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        trainer.fit()
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored
    last = json.loads((tmp_path / "last.json").read_text())
    assert last["finished"] is False and last["step"] == 5 and last["episodes"] == 5
    assert max(r["step"] for r in _metrics(tmp_path)) <= 5

    resumed = _trainer(tmp_path, train_data, val_data, init_seed=42)
    summary = resumed.fit(resume=True)
    assert summary["finished"] and summary["step"] == 12
    assert json.loads((tmp_path / "last.json").read_text())["finished"] is True
    _assert_same_weights(_weights(resumed), straight_weights)
    _assert_no_duplicate_steps(tmp_path, straight_dir, partial_window=("train", 6))


class _Killed(Exception):
    """Stands in for SIGKILL: the loop dies between two checkpoints, nothing more is saved."""


def _kill_at(trainer: Trainer, call: int) -> None:
    original_loss = trainer.learner.loss
    calls = []

    def loss_or_die(episode):
        calls.append(1)
        if len(calls) == call:
            raise _Killed
        return original_loss(episode)

    trainer.learner.loss = loss_or_die


def test_kill_after_checkpoint_resume_drops_later_metrics(tmp_path: Path, straight_run,
                                                          train_data, val_data) -> None:
    straight_dir, straight_weights, _ = straight_run
    trainer = _trainer(tmp_path, train_data, val_data)
    _kill_at(trainer, 9)  # checkpoint at step 6 (validation), train lines logged up to step 8
    with pytest.raises(_Killed):
        trainer.fit()
    assert json.loads((tmp_path / "last.json").read_text())["step"] == 6
    assert max(r["step"] for r in _metrics(tmp_path)) == 8
    resumed = _trainer(tmp_path, train_data, val_data, init_seed=5)
    assert resumed.fit(resume=True)["step"] == 12
    _assert_same_weights(_weights(resumed), straight_weights)
    _assert_no_duplicate_steps(tmp_path, straight_dir)


def test_kill_before_first_checkpoint_resume_has_no_duplicate_metrics(tmp_path: Path,
                                                                      train_data) -> None:
    trainer = _trainer(tmp_path, train_data, None, val_every=100)
    _kill_at(trainer, 6)  # train lines at steps 2 and 4, no checkpoint yet
    with pytest.raises(_Killed):
        trainer.fit()
    assert not (tmp_path / "last.safetensors").exists()
    assert [r["step"] for r in _metrics(tmp_path)] == [2, 4]
    _trainer(tmp_path, train_data, None, val_every=100).fit(resume=True)
    steps = [r["step"] for r in _metrics(tmp_path)]
    assert steps == sorted(set(steps)), steps


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, train_data) -> None:
    trainer = _trainer(tmp_path, train_data, None, episodes=2)
    assert trainer.resume() is False
    summary = trainer.fit(resume=True)
    assert summary["step"] == 2 and summary["finished"]
    # no validation data: nothing is selected, the last checkpoint is the run's result
    assert not (tmp_path / "best.safetensors").exists()
    assert (tmp_path / "last.safetensors").is_file()
    assert {r["kind"] for r in _metrics(tmp_path)} == {"train"}


def test_resume_of_another_method_raises(tmp_path: Path, train_data) -> None:
    save_checkpoint(tmp_path, "last", {}, {"method": "knn", "step": 0})
    trainer = _trainer(tmp_path, train_data, None)
    with pytest.raises(KShotError, match="'knn' checkpoint"):
        trainer.fit(resume=True)


def test_time_budget_stops_early(tmp_path: Path, train_data, val_data) -> None:
    trainer = _trainer(tmp_path, train_data, val_data, episodes=1000, time_budget=1e-9)
    summary = trainer.fit()
    assert summary["finished"] is True
    assert summary["step"] == 1 < trainer.total_steps
    last = json.loads((tmp_path / "last.json").read_text())
    assert last["finished"] is True and last["step"] == 1
    # it validated before stopping, so a best checkpoint exists
    assert (tmp_path / "best.safetensors").is_file()
    assert [r["kind"] for r in _metrics(tmp_path)] == ["val"]


def test_knn_fit_records_model(tmp_path: Path, train_data, val_data) -> None:
    learner = build_learner("knn", {"k": 1}, ITEM_SHAPE)
    trainer = Trainer(learner, _config(episodes=0, val_episodes=2), tmp_path, train_data, val_data,
                      progress=False)
    summary = trainer.fit()
    assert summary["finished"] and summary["step"] == 0
    assert json.loads((tmp_path / "last.json").read_text())["method"] == "knn"
    assert (tmp_path / "best.safetensors").is_file()


def test_grad_clip_bounds_the_step_gradient(tmp_path: Path, train_data) -> None:
    """With grad_clip the optimiser sees a gradient of global norm <= the bound, the metrics log
    the norm before clipping, and without it the gradient is left alone."""
    seen = {}
    for clip in (0.0, 1e-3):
        trainer = _trainer(tmp_path / str(clip), train_data, None, episodes=2, log_every=1,
                           grad_clip=clip)
        norms = []
        step = trainer.optimizer.step

        def recording_step(*args, step=step, norms=norms, trainer=trainer, **kwargs):
            grads = [p.grad for p in trainer.learner.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads]))))
            return step(*args, **kwargs)

        trainer.optimizer.step = recording_step
        trainer.fit()
        seen[clip] = (norms, [r.get("grad_norm") for r in _metrics(tmp_path / str(clip))])
    unclipped, logged = seen[0.0]
    assert min(unclipped) > 1e-2 and logged == [None, None]
    clipped, logged = seen[1e-3]
    assert max(clipped) == pytest.approx(1e-3, rel=1e-4)
    assert logged[0] == pytest.approx(unclipped[0], rel=1e-4)  # same start, same first gradient


def test_grad_clip_must_not_be_negative() -> None:
    with pytest.raises(KShotError, match="--grad-clip must be >= 0"):
        _config(grad_clip=-1.0)
