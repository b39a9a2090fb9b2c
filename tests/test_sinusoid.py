"""``kshot sinusoid``, domain-adaptive meta-learning, and the test-time options of ``kshot eval``:
small real runs on sinusoid tasks, checked for what the command promises (JSON lines per model
and step count, the picture, reuse of a finished run, one-line refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kshot.cli import main
from kshot.errors import KShotError
from kshot.methods.base import build_learner
from kshot.tasks import SinusoidTasks
from kshot.train import TrainConfig, Trainer

SMALL = ["--iterations", "150", "--meta-batch", "10", "--tasks", "40", "--test-points", "20",
         "--val-every", "100", "--val-tasks", "20", "--threads", "1", "--quiet", "--json"]


def kshot(capsys, *argv) -> tuple[int, list[dict], str]:
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return code, lines, captured.err


@pytest.fixture(scope="module")
def maml_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sinusoid")
    assert main(["sinusoid", "maml", "--out", str(out), "--shots", "5", *SMALL]) == 0
    return out


def test_sinusoid_maml_lines_picture_and_reuse(maml_out, capsys):
    code, lines, _ = kshot(capsys, "sinusoid", "maml", "--out", maml_out, "--shots", "5", *SMALL)
    assert code == 0
    assert [(r["method"], r["steps"]) for r in lines] == [
        (m, s) for m in ("maml", "pretrained") for s in (0, 1, 5, 10)]
    for record in lines:
        assert record["task"] == "sinusoid" and record["family"] == "finn"
        assert record["k_shot"] == 5 and record["tasks"] == 40 and record["seed"] == 123
        assert record["mse"] > 0 and record["ci95"] > 0 and record["run"].startswith(str(maml_out))
        assert record["train_tasks"] == 1500  # reused: the finished run was not trained again
    png = maml_out / "sinusoid-maml.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # another seed re-scores on other tasks without retraining
    code, other, _ = kshot(capsys, "sinusoid", "maml", "--out", maml_out, "--shots", "5",
                           *SMALL, "--seed", "7")
    assert code == 0 and [r["seed"] for r in other] == [7] * 8
    assert [r["mse"] for r in other] != [r["mse"] for r in lines]


def test_a_run_stored_before_a_config_field_existed_is_reused(maml_out, capsys):
    """A field added to the method's or the training config since the run was stored (MAML's
    ``downsample``, the Trainer's ``aug_probability``) takes its default: the finished run is
    re-scored, not refused as another configuration."""
    path = maml_out / "maml" / "config.json"
    stored = json.loads(path.read_text())
    assert stored["method_config"].pop("downsample") == "max"
    assert stored["train_config"].pop("aug_probability") == 0.5
    path.write_text(json.dumps(stored))
    code, lines, _ = kshot(capsys, "sinusoid", "maml", "--out", maml_out, "--shots", "5", *SMALL)
    assert code == 0 and lines and all(r["train_tasks"] == 1500 for r in lines)


def test_sinusoid_refusals(maml_out, capsys):
    # the same folder with another shot is another run: refused, nothing overwritten
    code, _, err = kshot(capsys, "sinusoid", "maml", "--out", maml_out, "--shots", "10", *SMALL)
    assert code == 2 and err.startswith("kshot: error:") and "another" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = kshot(capsys, "sinusoid", "maml", "--out", maml_out / "x", "--shots", "0",
                         *SMALL)
    assert code == 2 and "--shots" in err
    # a sinusoid run is not scored on class episodes
    code, _, err = kshot(capsys, "eval", maml_out / "maml", "--dataset", "omniglot", "--episodes",
                         "5")
    assert code == 2 and "sinusoid run" in err and len(err.strip().splitlines()) == 1


def test_finite_tasks_refuse_more_points_than_they_have():
    family = SinusoidTasks(points=8)
    family.sampler(5, 3)
    with pytest.raises(KShotError, match="more than the 8 points"):
        family.sampler(5, 4)


def test_daml_adapts_without_labels():
    """DAML's inner loop sees the observations in support_y, never the query labels, and its
    adaptation loss gets gradients only through the second-order term."""
    torch.manual_seed(0)
    learner = build_learner("daml", {"mlp": [16, 16], "loss_hidden": [8]}, (1,))
    batch = SinusoidTasks(observation="shifted").sampler(5, 10, seed=1).batch(range(4))
    loss, _ = learner.loss(batch)
    loss.backward()
    psi = [p.grad for p in learner.adaptation_loss.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in psi)
    assert sum(float(g.abs().sum()) for g in psi) > 0
    learner.eval()
    with torch.no_grad():
        adapted = learner(batch.support_x, batch.support_y, batch.query_x)
        moved = learner(batch.support_x, batch.support_y + 1.0, batch.query_x)
    assert not torch.allclose(adapted, moved)  # the observations drive the adaptation
    with pytest.raises(KShotError, match="second-order"):
        build_learner("daml", {"first_order": True}, (1,))
    with pytest.raises(KShotError, match="1-d items"):
        build_learner("daml", {}, (1, 28, 28))


def test_daml_learns_from_shifted_observations(tmp_path):
    """A short DAML run: adapting from the observations lowers the query MSE below that of the
    meta-learned initialisation on fresh tasks."""
    from kshot.evaluate import evaluate

    torch.manual_seed(0)
    family = SinusoidTasks(observation="shifted")
    learner = build_learner("daml", {}, (1,))
    config = TrainConfig(episodes=25 * 500, ways=1, shots=10, queries=10, meta_batch=25,
                         schedule="constant", val_episodes=0, log_every=10**9)
    Trainer(learner, config, tmp_path, family, progress=False).fit()
    sampler = family.sampler(10, 50, seed=99)
    learner.test_steps = 0
    before = evaluate(learner, sampler, 300, batch_size=100)
    learner.test_steps = 10
    after = evaluate(learner, sampler, 300, batch_size=100)
    print(f"\nDAML after 500 steps: MSE {before.mean:.3f} -> {after.mean:.3f}")
    assert after.mean < 0.8 * before.mean


def test_eval_set_options(tmp_path, capsys, monkeypatch, shared_data):
    monkeypatch.setenv("KSHOT_DATA_DIR", str(shared_data))
    out = tmp_path / "maml"
    assert main(["train", "maml", "--dataset", "omniglot", "--split", "lake", "--episodes", "8",
                 "--meta-batch", "4", "--hidden", "8", "--val-episodes", "0", "--threads", "1",
                 "--quiet", "--out", str(out)]) == 0
    base = ["eval", out, "--episodes", "6", "--queries", "3", "--threads", "1", "--json"]
    code, lines, _ = kshot(capsys, *base, "--set", "norm=running", "--set", "test_inner_steps=2")
    assert code == 0 and lines[0]["test_options"] == {"norm": "running", "test_inner_steps": "2"}
    code, plain, _ = kshot(capsys, *base)
    assert code == 0 and "test_options" not in plain[0]
    for option, message in (("hidden=3", "not a test-time option"),
                            ("test_inner_steps=x", "expected a int"),
                            ("norm=bogus", "--norm must be one of"), ("oops", "FIELD=VALUE")):
        code, _, err = kshot(capsys, *base, "--set", option)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = kshot(capsys, *base, "--ways", "3")
    assert code == 2 and "5-way episodes" in err
