"""Honest comparisons: runs record the classes they saw, and every evaluation path refuses to score
them on those classes; every data set has held-out classes; Lake's runs are traced to the
characters they draw on.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_cli import assert_user_error, env, kshot  # noqa: F401  (env: the module's data and cache dirs)

from kshot.classifier import FewShotClassifier
from kshot.datasets import load_dataset
from kshot.errors import KShotError
from kshot.protocol import (
    check_overlap_sets,
    class_ids,
    count_overlap,
    lake_run_class_ids,
    read_seen,
    source_class,
)

TINY = ["--ways", "5", "--shots", "1", "--queries", "2", "--episodes", "2", "--hidden", "8",
        "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Tiny real runs: vinyals (train/val), lake, lake trainval, mnist heldout and mnist all."""
    from kshot.cli import main

    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, options in {
        "vinyals": ["--split", "vinyals", "--val-every", "1", "--val-episodes", "2"],
        "lake": ["--split", "lake", "--rotations", "--val-every", "1", "--val-episodes", "2"],
        "trainval": ["--split", "lake", "--train-on", "trainval"],
        "mnist": ["--dataset", "mnist"],
        "mnist_all": ["--dataset", "mnist", "--split", "all"],
    }.items():
        out = root / name
        assert main(["train", "protonet", *TINY, *options, "--out", str(out)]) == 0
        made[name] = out
    return SimpleNamespace(**made)


# --- what a run records ------------------------------------------------------------------------


def test_run_records_train_and_val_classes(runs) -> None:
    record = read_seen(runs.vinyals)
    assert len(record["train"]) == 4112 and len(record["val"]) == 688
    assert "omniglot:Angelic/character01@rot90" in record["train"]
    assert "omniglot:Hebrew/character01@rot0" in record["val"]
    assert not {source_class(c) for c in record["train"]} & {source_class(c) for c in record["val"]}
    lake = read_seen(runs.lake)
    assert len(lake["train"]) == 4 * 864 and len(lake["val"]) == 100  # val is never rotated
    trainval = read_seen(runs.trainval)
    assert len(trainval["train"]) == 964 and trainval["val"] == []


def test_trainval_run_keeps_its_last_checkpoint(capsys, runs) -> None:
    assert not (runs.trainval / "best.safetensors").exists()
    code, out, err = kshot(capsys, "eval", runs.trainval, "--episodes", 5, "--queries", 5,
                           "--threads", 1, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["checkpoint"] == "last" and record["checkpoint_episodes"] == 2
    assert record["overlap"] == 0 and record["test_classes"] == 659


# --- the guard ---------------------------------------------------------------------------------


def test_vinyals_run_refused_on_lake_test(capsys, runs) -> None:
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--split", "lake", "--episodes", 5,
                           "--threads", 1, "--json")
    line = assert_user_error(code, out, err, "--allow-overlap")
    # vinyals train + val hold 236 of the 659 evaluation characters (7 alphabets and Gurmukhi 1-41)
    assert "236 of the 659 classes of omniglot/lake/test" in line
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--split", "lake", "--episodes", 5,
                           "--queries", 5, "--threads", 1, "--json", "--allow-overlap")
    assert code == 0, err
    assert json.loads(out)["overlap"] == 236


def test_vinyals_run_on_its_own_test_set(capsys, runs) -> None:
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--episodes", 5, "--queries", 5,
                           "--threads", 1, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["overlap"] == 0 and record["test_classes"] == 1692 and record["test_rotations"]
    assert record["checkpoint"] == "best"


def test_validation_classes_score_for_tuning_not_as_test(capsys, runs) -> None:
    # --subset val scores the classes that chose the checkpoint: allowed, and marked as such
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--subset", "val", "--episodes", 5,
                           "--queries", 5, "--threads", 1, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["subset"] == "val" and record["test_set"] == "omniglot/vinyals/val"
    assert record["test_classes"] == 688 and record["overlap"] == 0
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--episodes", 5, "--queries", 5,
                           "--threads", 1, "--json")
    test_record = json.loads(out)
    assert code == 0 and "subset" not in test_record and test_record["test_classes"] == 1692
    # the same episodes through kshot compare
    code, out, err = kshot(capsys, "compare", runs.vinyals, runs.vinyals, "--subset", "val",
                           "--episodes", 5, "--queries", 5, "--threads", 1, "--json")
    assert code == 0, err
    first = json.loads(out.splitlines()[0])
    assert first["subset"] == "val" and first["accuracy"] == record["accuracy"]
    # the training classes still count: a trainval run has no validation classes of its own
    code, out, err = kshot(capsys, "eval", runs.trainval, "--subset", "val", "--episodes", 5,
                           "--threads", 1)
    assert_user_error(code, out, err, "100 of the 100 classes of omniglot/lake/val were seen by")
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--subset", "val", "--lake-runs")
    assert_user_error(code, out, err, "--subset val does not apply")


def test_lake_runs_overlap_of_a_vinyals_run(capsys, runs) -> None:
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--lake-runs", "--json", "--threads", 1)
    line = assert_user_error(code, out, err, "of the 200 classes of Lake's 20 runs")
    expected = sum(1 for c in lake_run_class_ids()
                   if c.split(":")[1].split("/")[0] in ("Atlantean", "Ge_ez", "Glagolitic")
                   or (c.startswith("omniglot:Gurmukhi/") and int(c[-2:]) < 42))
    assert line.split("kshot: error: ")[1].startswith(f"{expected} of the 200")
    code, out, err = kshot(capsys, "eval", runs.vinyals, "--lake-runs", "--json", "--threads", 1,
                           "--allow-overlap")
    assert code == 0 and json.loads(out)["overlap"] == expected


def test_lake_run_scores_lakes_runs_without_overlap(capsys, runs) -> None:
    code, out, err = kshot(capsys, "eval", runs.lake, "--lake-runs", "--json", "--threads", 1)
    assert code == 0, err
    record = json.loads(out)
    assert record["overlap"] == 0 and record["run"] == str(runs.lake)


def test_mnist_run_on_mnist(capsys, runs) -> None:
    # the held-out split scores digits 5-9, which the run never saw
    code, out, err = kshot(capsys, "eval", runs.mnist, "--episodes", 5, "--queries", 5,
                           "--threads", 1, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["overlap"] == 0 and record["test_classes"] == 5 and record["split"] == "heldout"
    # a run trained on every digit is refused on every digit, and on the held-out digits too
    for split in ("all", "heldout"):
        code, out, err = kshot(capsys, "eval", runs.mnist_all, "--split", split, "--episodes", 5,
                               "--threads", 1)
        assert_user_error(code, out, err, "were seen by")
    # an Omniglot run scores MNIST's ten digits as a transfer target
    code, out, err = kshot(capsys, "eval", runs.lake, "--dataset", "mnist", "--split", "all",
                           "--ways", 10, "--episodes", 3, "--queries", 5, "--threads", 1, "--json")
    assert code == 0, err
    assert json.loads(out)["overlap"] == 0


def test_embedding_run_refused_when_its_classes_are_the_test_set(capsys, runs, tmp_path) -> None:
    out = tmp_path / "knn"
    code, o, err = kshot(capsys, "train", "knn", "--split", "lake", "--embedding-run",
                         runs.vinyals, "--episodes", 0, "--val-episodes", 0, "--out", out,
                         "--quiet", "--threads", 1)
    assert_user_error(code, o, err, "236 of the 659 classes")
    assert not out.exists()
    # on its own split's test set the reused embedding is fine, and the kNN run inherits its classes
    code, o, err = kshot(capsys, "train", "knn", "--split", "vinyals", "--embedding-run",
                         runs.vinyals, "--episodes", 0, "--val-episodes", 0, "--out", out,
                         "--quiet", "--threads", 1)
    assert code == 0, err
    assert len(read_seen(out)["inherited"]) == 4112 + 688
    code, o, err = kshot(capsys, "eval", out, "--split", "lake", "--episodes", 5, "--threads", 1)
    assert_user_error(code, o, err, "236 of the 659")


def test_classifier_refuses_support_classes_the_run_saw(runs) -> None:
    classifier = FewShotClassifier.from_run(runs.mnist, namespace="mnist")
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(KShotError, match="1 of the 2 classes"):
        classifier.fit(images, ["3", "7"])  # 3 was a training digit
    classifier.fit(images, ["5", "7"])
    assert classifier.overlap_ == 0
    allowed = FewShotClassifier.from_run(runs.mnist, namespace="mnist", allow_overlap=True)
    allowed.fit(images, ["3", "7"])
    assert allowed.overlap_ == 1


def test_run_without_record_is_refused(capsys, runs, tmp_path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs.lake, old)
    (old / "classes.json").unlink()
    code, out, err = kshot(capsys, "eval", old, "--episodes", 5, "--threads", 1)
    assert_user_error(code, out, err, "no classes.json")
    code, out, err = kshot(capsys, "eval", old, "--episodes", 5, "--queries", 5, "--threads", 1,
                           "--json", "--allow-overlap")
    assert code == 0 and json.loads(out)["overlap"] == -1


def test_overlap_counts_source_classes() -> None:
    seen = ["omniglot:A/character01@rot90", "mnist:3"]
    assert count_overlap(seen, ["omniglot:A/character01", "omniglot:A/character02"])[:2] == (1, 2)
    assert count_overlap(seen, ["omniglot:A/character01@rot0", "omniglot:A/character01@rot180"]
                         )[:2] == (1, 1)
    assert count_overlap(seen, ["digits:3", "folder:3"])[0] == 0  # namespaces differ
    with pytest.raises(KShotError, match="1 of the 1 classes of X were seen by R"):
        check_overlap_sets(seen, ["mnist:3"], "X", "R")
    assert check_overlap_sets(seen, ["mnist:3"], "X", "R", allow=True) == 1


# --- Lake's runs, from the data ----------------------------------------------------------------


def test_lake_runs_draw_on_200_evaluation_characters(shared_data: Path) -> None:
    ids = lake_run_class_ids()
    assert len(ids) == 200
    alphabets = {c.split(":")[1].split("/")[0] for c in ids}
    assert len(alphabets) == 10
    evaluation = set(class_ids(load_dataset("omniglot", "lake", "test", progress=False)))
    assert set(ids) <= evaluation


# --- held-out classes for every data set --------------------------------------------------------


@pytest.mark.parametrize("dataset", ["mnist", "digits"])
def test_digit_data_sets_hold_out_five_digits(dataset: str) -> None:
    train = load_dataset(dataset, subset="train", progress=False)
    test = load_dataset(dataset, subset="test", progress=False)
    assert train.class_names == ("0", "1", "2", "3", "4")
    assert test.class_names == ("5", "6", "7", "8", "9")
    assert test.meta["namespace"] == dataset
    everything = load_dataset(dataset, split="all", subset="test", progress=False)
    assert everything.n_classes == 10
    with pytest.raises(KShotError, match="no val part"):
        load_dataset(dataset, subset="val", progress=False)


def test_folder_holds_out_a_fifth_of_its_classes(tmp_path: Path) -> None:
    from PIL import Image

    for c in range(10):
        (tmp_path / f"class{c}").mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 20 * c + i, np.uint8)).save(tmp_path / f"class{c}/{i}.png")
    train = load_dataset("folder", subset="train", folder=tmp_path, image_size=8)
    test = load_dataset("folder", subset="test", folder=tmp_path, image_size=8)
    assert train.n_classes == 8 and test.n_classes == 2
    assert not set(train.class_names) & set(test.class_names)
    assert set(train.class_names) | set(test.class_names) == {f"class{c}" for c in range(10)}
    assert class_ids(test)[0].startswith("folder:class")
    assert load_dataset("folder", split="all", subset="test", folder=tmp_path,
                        image_size=8).n_classes == 10


def test_iris_has_no_held_out_split() -> None:
    with pytest.raises(KShotError, match="choose one of \\['all'\\]"):
        load_dataset("iris", split="heldout")
    assert load_dataset("iris").n_classes == 3
