"""Every numeric option of every config is range-checked where the config is built: the CLI and the
Python API get one KShotError naming the option and its range, and nothing is written."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from kshot.cli import main
from kshot.config import POSITIVE, Range, check_choice, check_ranges
from kshot.errors import KShotError
from kshot.methods.base import METHODS, get_method
from kshot.train import TrainConfig

get_method("protonet")  # registers every method
CONFIGS = [TrainConfig] + [cls.Config for _, cls in sorted(METHODS.items())]


def _numeric_fields(config_type):
    for f in fields(config_type):
        default = f.default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        yield f.name, default


@pytest.mark.parametrize("config_type", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_option_rejects_nan_and_huge_negatives(config_type) -> None:
    checked = 0
    for name, _ in _numeric_fields(config_type):
        for bad in (math.nan, -1e12):
            with pytest.raises(KShotError, match="--" + name.replace("_", "-")):
                config_type(**{name: bad})
        checked += 1
    assert checked or config_type.__name__ == "KNNConfig"


@pytest.mark.parametrize("config_type", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid(config_type) -> None:
    config_type()


def test_range_descriptions_and_bounds() -> None:
    class Holder:
        rate = 0.0

    with pytest.raises(KShotError, match=r"--rate must be > 0, got 0.0"):
        check_ranges(Holder(), rate=POSITIVE)
    Holder.rate = 1.0
    check_ranges(Holder(), rate=Range(0, 1))
    with pytest.raises(KShotError, match=r">= 0 and < 1"):
        check_ranges(Holder(), rate=Range(0, 1, high_open=True))
    Holder.rate = "x"
    with pytest.raises(KShotError, match="must be a number"):
        check_ranges(Holder(), rate=POSITIVE)
    Holder.rate = "b"
    with pytest.raises(KShotError, match="one of a, c"):
        check_choice(Holder(), "rate", ("a", "c"))


def test_cli_reports_bad_numbers_in_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "protonet", "--lr", "-1", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "kshot: error: --lr must be > 0, got -1.0"
    assert not out.exists()
    assert main(["train", "protonet", "--episodes", "-5", "--out", str(out), "--quiet"]) == 2
    assert "--episodes must be >= 0" in capsys.readouterr().err
    assert main(["train", "protonet", "--threads", "0", "--out", str(out), "--quiet"]) == 2
    assert "--threads must be an integer >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_eval_rejects_bad_episode_counts(tmp_path, capsys, shared_data) -> None:
    run = tmp_path / "knn"
    assert main(["train", "knn", "--dataset", "omniglot", "--split", "lake", "--episodes", "0",
                 "--val-episodes", "0", "--out", str(run), "--quiet", "--data-dir",
                 str(shared_data)]) == 0
    capsys.readouterr()
    for option, value in (("--episodes", "-3"), ("--batch-size", "0")):
        assert main(["eval", str(run), option, value, "--data-dir", str(shared_data)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and option in err and "Traceback" not in err
