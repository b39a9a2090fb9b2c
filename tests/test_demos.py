"""Tests of the chapter-1 kNN-vs-MLP demo and its iris plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kshot.demos import KnnVsMlpConfig, format_knn_vs_mlp, knn_vs_mlp, plot_iris_3d
from kshot.errors import KShotError

SMALL_DRAWS = 20


@pytest.fixture(scope="module")
def small_result() -> dict:
    """One small run shared by the tests (fitting MLPs is the slow part)."""
    return knn_vs_mlp(KnnVsMlpConfig(draws=SMALL_DRAWS, max_iter=300, seed=0))


def test_small_run_shapes_and_ranges(small_result: dict) -> None:
    assert small_result["draws"] == SMALL_DRAWS
    assert small_result["n_train"] == 24 and small_result["n_test"] == 6
    for method in ("knn", "mlp"):
        accuracies = small_result[f"{method}_accuracies"]
        assert len(accuracies) == SMALL_DRAWS
        assert all(0.0 <= accuracy <= 1.0 for accuracy in accuracies)
        assert 0.0 <= small_result[f"{method}_mean"] <= 1.0


def test_win_tie_loss_counts_cover_every_draw(small_result: dict) -> None:
    knn = np.array(small_result["knn_accuracies"])
    mlp = np.array(small_result["mlp_accuracies"])
    assert small_result["knn_wins"] + small_result["mlp_wins"] + small_result["ties"] == SMALL_DRAWS
    assert small_result["knn_wins"] == int(np.sum(knn > mlp))
    assert small_result["mlp_wins"] == int(np.sum(mlp > knn))


def test_confidence_interval_matches_numpy(small_result: dict) -> None:
    for method in ("knn", "mlp"):
        accuracies = np.array(small_result[f"{method}_accuracies"])
        assert small_result[f"{method}_mean"] == pytest.approx(accuracies.mean())
        expected_ci95 = 1.96 * accuracies.std() / np.sqrt(len(accuracies))
        assert small_result[f"{method}_ci95"] == pytest.approx(expected_ci95)
    difference = np.array(small_result["knn_accuracies"]) - np.array(small_result["mlp_accuracies"])
    assert small_result["difference_ci95"] == pytest.approx(
        1.96 * difference.std() / np.sqrt(len(difference))
    )


def test_same_seed_gives_same_result() -> None:
    config = KnnVsMlpConfig(draws=3, max_iter=100, seed=7)
    assert knn_vs_mlp(config) == knn_vs_mlp(config)
    other = knn_vs_mlp(KnnVsMlpConfig(draws=3, max_iter=100, seed=8))
    assert other["config"]["seed"] == 8


def test_format_has_table_and_conclusion(small_result: dict) -> None:
    text = format_knn_vs_mlp(small_result)
    assert "| method | mean accuracy ± 95% CI | wins |" in text
    assert "| kNN (k=3) |" in text and "| MLP (13, 13, 13) |" in text
    assert text.splitlines()[-1].startswith("Conclusion:")


@pytest.mark.parametrize(
    "bad_config",
    [
        KnnVsMlpConfig(n_points=200),
        KnnVsMlpConfig(test_fraction=1.0),
        KnnVsMlpConfig(k=25),
        KnnVsMlpConfig(hidden=()),
        KnnVsMlpConfig(draws=0),
    ],
)
def test_bad_config_raises(bad_config: KnnVsMlpConfig) -> None:
    with pytest.raises(KShotError):
        knn_vs_mlp(bad_config)


def test_plot_iris_3d_writes_png(tmp_path) -> None:
    out = tmp_path / "figures" / "iris.png"
    written = plot_iris_3d(out, seed=0)
    assert written == out and out.is_file()
    with Image.open(out) as image:
        assert image.format == "PNG"
        image.verify()
    assert [path.name for path in out.parent.iterdir()] == ["iris.png"]  # no temp file left
