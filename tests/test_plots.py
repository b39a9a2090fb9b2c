"""Tests of the training-curve plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kshot.errors import KShotError
from kshot.plots import plot_run, read_metrics, running_mean


def _write_metrics(run_dir, n_train: int = 40, val_every: int = 10, truncated_tail: bool = True):
    lines = []
    for step in range(1, n_train + 1):
        lines.append(json.dumps({
            "kind": "train", "step": step, "episodes": step * 4, "seconds": step * 0.5,
            "loss": 1.5 / step, "accuracy": min(1.0, 0.2 + step / 50),
        }))
        if step % val_every == 0:
            lines.append(json.dumps({
                "kind": "val", "step": step, "episodes": step * 4, "seconds": step * 0.5 + 0.1,
                "accuracy": min(1.0, 0.3 + step / 60), "ci95": 0.02,
            }))
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += '{"kind": "train", "step": 41, "episodes": 16'  # a run killed mid-write
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")


def test_plot_run_writes_png_despite_truncated_line(tmp_path) -> None:
    _write_metrics(tmp_path)
    written = plot_run(tmp_path)
    assert written == tmp_path / "curves.png"
    with Image.open(written) as image:
        assert image.format == "PNG"
        image.verify()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_read_metrics_skips_malformed_lines(tmp_path) -> None:
    _write_metrics(tmp_path)
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as metrics_file:
        metrics_file.write('\n[1, 2]\n{"kind": "val", "step": 1}\n{"kind": "other"}\n')
    metrics = read_metrics(tmp_path)
    assert len(metrics.train) == 40 and len(metrics.val) == 4


def test_plot_run_custom_out_and_only_validation(tmp_path) -> None:
    record = {"kind": "val", "step": 5, "episodes": 20, "seconds": 1.0, "accuracy": 0.5,
              "ci95": 0.1}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    out = tmp_path / "plots" / "run.png"
    assert plot_run(tmp_path, out=out) == out
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_missing_metrics_raises(tmp_path) -> None:
    with pytest.raises(KShotError, match="has no metrics.jsonl"):
        plot_run(tmp_path)
    assert not (tmp_path / "curves.png").exists()


def test_empty_or_garbage_metrics_raises(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(KShotError, match="train a model into it first"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"kind": "tr', encoding="utf-8")
    with pytest.raises(KShotError):
        plot_run(tmp_path)


def test_running_mean_is_trailing_window_mean() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0])
    expected = [1.0, 1.5, 2.0, 3.0, 3.5, 5.0]  # window 3, NaN ignored
    np.testing.assert_allclose(running_mean(values, 3), expected)
