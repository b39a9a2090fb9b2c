"""``kshot compare``: paired statistics against hand-computed values, and the command on two tiny
real runs (kNN on pixels, a ProtoNet trained for 200 episodes) scored on the same episodes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
from test_cli import assert_user_error, env, kshot  # noqa: F401  (env: the module's data and cache dirs)

from kshot.cli import main
from kshot.compare import compare_runs, format_p, paired_difference
from kshot.errors import KShotError

EVAL = ["--episodes", "60", "--queries", "5", "--seed", "7", "--threads", "1"]
EVAL_KEYS = {"method", "dataset", "split", "test_set", "test_classes", "test_rotations", "ways",
             "shots", "queries", "episodes", "seed", "accuracy", "ci95", "overlap", "run",
             "checkpoint", "checkpoint_episodes", "seconds", "episodes_per_s"}
TIMING = {"seconds", "episodes_per_s"}


# --- the statistics ----------------------------------------------------------------------------


def test_paired_difference_hand_computed() -> None:
    a = [1.0, 0.0, 1.0, 1.0, 0.5]
    b = [0.0, 0.0, 1.0, 0.0, 0.5]
    # differences 1, 0, 0, 1, 0: mean 0.4, population variance 0.24, sample variance 0.3
    result = paired_difference(a, b)
    assert result.mean == pytest.approx(0.4)
    assert result.ci95 == pytest.approx(1.96 * math.sqrt(0.24) / math.sqrt(5))
    t = 0.4 / (math.sqrt(0.3) / math.sqrt(5))  # 1.633, 4 degrees of freedom
    assert t == pytest.approx(1.63299, abs=1e-4)
    assert result.p_value == pytest.approx(2 * scipy.stats.t.sf(t, 4))
    assert result.p_value == pytest.approx(0.17781, abs=1e-4)
    assert result.p_value == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue)
    assert result.p_wilcoxon == pytest.approx(
        scipy.stats.wilcoxon(np.subtract(a, b), zero_method="zsplit").pvalue)
    assert (result.n, result.n_positive, result.n_negative, result.n_zero) == (5, 2, 0, 3)
    swapped = paired_difference(b, a)  # antisymmetric mean, same tests
    assert swapped.mean == pytest.approx(-0.4) and swapped.ci95 == pytest.approx(result.ci95)
    assert swapped.p_value == pytest.approx(result.p_value)
    assert swapped.p_wilcoxon == pytest.approx(result.p_wilcoxon)


def test_identical_scores_give_zero_and_p_one() -> None:
    scores = torch.rand(50, generator=torch.Generator().manual_seed(0))
    result = paired_difference(scores, scores.clone())
    assert (result.mean, result.ci95, result.p_value, result.p_wilcoxon) == (0.0, 0.0, 1.0, 1.0)
    assert (result.n_positive, result.n_negative, result.n_zero) == (0, 0, 50)
    single = paired_difference([0.5], [0.25])  # one pair: no test possible, no NaN
    assert single.mean == 0.25 and single.ci95 == 0.0 and single.p_value == 1.0


def test_large_consistent_difference_gives_tiny_p() -> None:
    generator = np.random.default_rng(0)
    b = generator.uniform(0.3, 0.6, 400)
    a = b + 0.2 + generator.normal(0, 0.05, 400)
    result = paired_difference(a, b)
    assert result.mean == pytest.approx(0.2, abs=0.01)
    assert result.p_value < 1e-100 and result.p_wilcoxon < 1e-50
    assert result.mean - result.ci95 > 0.19
    constant = paired_difference(np.full(10, 0.7), np.full(10, 0.2))  # no spread at all
    assert constant.p_value == 0.0 and constant.ci95 == pytest.approx(0.0)
    noisy = paired_difference(b[:40] + generator.normal(0, 0.1, 40), b[:40])  # no effect
    assert noisy.p_value > 1e-3


def test_paired_difference_refuses_bad_input() -> None:
    with pytest.raises(KShotError, match="one length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(KShotError, match="empty"):
        paired_difference([], [])
    with pytest.raises(KShotError, match="NaN"):
        paired_difference([1.0, float("nan")], [1.0, 0.0])


def test_format_p() -> None:
    assert format_p(1.0) == "1.000" and format_p(0.0123) == "0.012"
    assert format_p(3.2e-7) == "3.2e-07" and format_p(0.0) == "<1e-300"


# --- two tiny real runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env, one_thread) -> SimpleNamespace:  # noqa: F811
    """kNN on pixels (nothing to train) and a ProtoNet trained 200 episodes, on the lake split."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--dataset", "omniglot", "--split", "lake", "--threads", "1", "--quiet"]
    knn, protonet = root / "knn", root / "protonet"
    assert main(["train", "knn", *common, "--episodes", "0", "--val-episodes", "0",
                 "--out", str(knn)]) == 0
    assert main(["train", "protonet", *common, "--ways", "20", "--queries", "5",
                 "--episodes", "200", "--val-every", "200", "--val-episodes", "20",
                 "--hidden", "8", "--out", str(protonet)]) == 0
    return SimpleNamespace(root=root, knn=knn, protonet=protonet)


def _eval_record(capsys, run_dir: Path, *options) -> dict:
    code, out, err = kshot(capsys, "eval", run_dir, "--json", *options)
    assert code == 0, err
    return json.loads(out)


def test_compare_json_matches_eval(capsys, runs) -> None:
    code, out, err = kshot(capsys, "compare", runs.knn, runs.protonet, "--json", *EVAL)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    knn, protonet, pair = records
    for record, run_dir in ((knn, runs.knn), (protonet, runs.protonet)):
        assert set(record) == EVAL_KEYS
        alone = _eval_record(capsys, run_dir, *EVAL)  # the same seed: the same episodes
        assert {k: v for k, v in record.items() if k not in TIMING} == \
            {k: v for k, v in alone.items() if k not in TIMING}
    assert (knn["method"], protonet["method"]) == ("knn", "protonet")
    assert knn["checkpoint"] == "last" and protonet["checkpoint"] == "best"
    assert pair["kind"] == "pair" and pair["metric"] == "accuracy"
    assert (pair["run_a"], pair["run_b"]) == (str(runs.knn), str(runs.protonet))
    assert (pair["episodes"], pair["seed"], pair["ways"], pair["queries"]) == (60, 7, 5, 5)
    # the mean of the paired differences is the difference of the means; ProtoNet is far better
    assert pair["difference"] == pytest.approx(knn["accuracy"] - protonet["accuracy"], abs=2e-3)
    assert pair["difference"] < -15
    assert pair["difference"] + pair["ci95"] < 0
    assert pair["p_value"] < 1e-6 and pair["p_wilcoxon"] < 1e-4
    assert pair["b_higher"] > pair["a_higher"]
    assert pair["a_higher"] + pair["b_higher"] + pair["equal"] == 60

    code, table, err = kshot(capsys, "compare", runs.knn, runs.protonet, *EVAL)
    assert code == 0, err
    assert "omniglot/lake/test (659 classes): 5-way 1-shot, 5 queries, 60 episodes, seed 7" in table
    for record, label in ((knn, "knn"), (protonet, "protonet")):
        row = next(line for line in table.splitlines() if line.startswith(label + " ")).split()
        assert row[1:3] == [record["method"], record["checkpoint"]]
        assert row[4] == "±"  # the JSON keeps 3 decimals, the table 2
        assert float(row[3]) == pytest.approx(record["accuracy"], abs=0.0051)
        assert float(row[5]) == pytest.approx(record["ci95"], abs=0.0051)
    _assert_pair_row(table.splitlines()[-1], "knn", "protonet", pair)


def test_compare_runs_from_python(runs, one_thread) -> None:
    result = compare_runs([runs.protonet, runs.knn, runs.protonet], episodes=20, queries=5,
                          seed=3)
    assert [run.method for run in result.runs] == ["protonet", "knn", "protonet"]
    # the same run twice: labels told apart, scores equal episode by episode
    assert len({run.label for run in result.runs}) == 3
    assert torch.equal(result.runs[0].values, result.runs[2].values)
    assert [(p.a, p.b) for p in result.pairs] == [(0, 1), (0, 2), (1, 2)]
    same = result.pairs[1].result
    assert (same.mean, same.ci95, same.p_value, same.p_wilcoxon) == (0.0, 0.0, 1.0, 1.0)
    assert result.pairs[0].result.mean > 0 and result.pairs[2].result.mean < 0
    assert result.runs[0].values.shape == (20,)


def test_compare_lake_runs(capsys, runs) -> None:
    code, out, err = kshot(capsys, "compare", runs.knn, runs.protonet, "--lake-runs", "--json",
                           "--threads", 1)
    assert code == 0, err
    knn, protonet, pair = (json.loads(line) for line in out.splitlines())
    for record, run_dir in ((knn, runs.knn), (protonet, runs.protonet)):
        alone = _eval_record(capsys, run_dir, "--lake-runs", "--threads", 1)
        assert set(record) == set(alone)
        assert record["per_run"] == alone["per_run"] and record["error"] == alone["error"]
        assert record["overlap"] == 0 and len(record["per_run"]) == 20
    assert pair["kind"] == "pair" and pair["metric"] == "error"
    assert pair["episodes"] == 20 and pair["seed"] is None
    assert pair["difference"] == pytest.approx(knn["error"] - protonet["error"], abs=2e-3)
    differences = np.subtract(knn["per_run"], protonet["per_run"])
    assert pair["ci95"] == pytest.approx(1.96 * differences.std() / math.sqrt(20), abs=2e-3)
    assert pair["p_value"] == pytest.approx(
        scipy.stats.ttest_rel(knn["per_run"], protonet["per_run"]).pvalue)
    code, table, err = kshot(capsys, "compare", runs.knn, runs.protonet, "--lake-runs",
                             "--threads", 1)
    assert code == 0, err
    assert table.startswith("Lake's 20 runs") and "error %" in table
    _assert_pair_row(table.splitlines()[-1], "knn", "protonet", pair)


def _assert_pair_row(line: str, label_a: str, label_b: str, pair: dict) -> None:
    """A pair row of the table (``a b difference ± ci counts p p``) agrees with its JSON line."""
    cells = line.split()
    assert cells[:2] == [label_a, label_b] and cells[3] == "±", line
    assert float(cells[2]) == pytest.approx(pair["difference"], abs=0.0051)
    assert float(cells[4]) == pytest.approx(pair["ci95"], abs=0.0051)
    assert cells[5] == f"{pair['a_higher']}/{pair['b_higher']}/{pair['equal']}"
    assert cells[6:] == [format_p(pair["p_value"]), format_p(pair["p_wilcoxon"])]


# --- bad input: exit 2, one line ---------------------------------------------------------------


def _edited_copy(run_dir: Path, target: Path, edit) -> Path:
    shutil.copytree(run_dir, target)
    config = json.loads((target / "config.json").read_text())
    edit(config["data"])
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def test_missing_run_and_single_run(capsys, runs, tmp_path: Path) -> None:
    code, out, err = kshot(capsys, "compare", runs.knn, tmp_path / "nowhere", *EVAL)
    assert_user_error(code, out, err, match="does not exist")
    assert out == ""
    code, out, err = kshot(capsys, "compare", runs.knn, *EVAL)
    assert_user_error(code, out, err, match="at least 2")
    code, out, err = kshot(capsys, "compare", runs.knn, tmp_path, *EVAL)
    assert_user_error(code, out, err, match="not a kshot run directory")


def test_runs_of_different_image_sizes_are_scored_each_at_its_own(capsys, runs,
                                                                   tmp_path: Path) -> None:
    def smaller(data):
        data["image_size"], data["item_shape"] = 14, [1, 14, 14]

    small = _edited_copy(runs.knn, tmp_path / "small", smaller)
    code, out, err = kshot(capsys, "compare", runs.protonet, small, runs.knn, "--json", *EVAL)
    assert code == 0, err
    protonet, knn14, knn28 = (json.loads(line) for line in out.splitlines()[:3])
    # each line is the run's own `kshot eval` (at its own size) on the seed's episodes
    for record, run_dir in ((protonet, runs.protonet), (knn14, small), (knn28, runs.knn)):
        alone = _eval_record(capsys, run_dir, *EVAL)
        assert {k: v for k, v in record.items() if k not in TIMING} == \
            {k: v for k, v in alone.items() if k not in TIMING}
    assert knn14["accuracy"] != knn28["accuracy"]  # the 14-pixel images really were used


def test_runs_of_different_channels_or_splits(capsys, runs, tmp_path: Path) -> None:
    colour = _edited_copy(runs.knn, tmp_path / "colour",
                          lambda data: data.update(item_shape=[3, 28, 28]))
    code, out, err = kshot(capsys, "compare", runs.protonet, colour, *EVAL)
    assert_user_error(code, out, err, match="same channels")
    assert out == ""
    vinyals = _edited_copy(runs.knn, tmp_path / "vinyals",
                           lambda data: data.update(split="vinyals"))
    code, out, err = kshot(capsys, "compare", runs.protonet, vinyals, *EVAL)
    assert_user_error(code, out, err, match="split")


def test_test_sets_of_other_items_are_refused() -> None:
    from kshot.compare import _check_same_items
    from kshot.data.dataset import ClassDataset

    def dataset(sizes, image_size):
        labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
        return ClassDataset.from_labels(torch.zeros(len(labels), 1, image_size, image_size),
                                        labels, [f"c{i}" for i in range(len(sizes))], name="toy")

    _check_same_items([dataset([3, 4], 8), dataset([3, 4], 5)])  # same classes and sizes: fine
    with pytest.raises(KShotError, match="same classes and items"):
        _check_same_items([dataset([3, 4], 8), dataset([3, 5], 5)])


def test_overlap_guard(capsys, runs, tmp_path: Path) -> None:
    from kshot.datasets import load_dataset
    from kshot.protocol import class_ids

    test_ids = class_ids(load_dataset("omniglot", split="lake", subset="test", progress=False))
    leaky = tmp_path / "leaky"
    shutil.copytree(runs.knn, leaky)
    seen = json.loads((leaky / "classes.json").read_text())
    seen["train"] = sorted(seen["train"] + test_ids[:3])
    (leaky / "classes.json").write_text(json.dumps(seen))
    code, out, err = kshot(capsys, "compare", runs.protonet, leaky, "--json", *EVAL)
    assert_user_error(code, out, err, match="--allow-overlap")
    assert out == ""
    code, out, err = kshot(capsys, "compare", runs.protonet, leaky, "--json", "--allow-overlap",
                           *EVAL)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r.get("overlap") for r in records[:2]] == [0, 3]
