"""Training curves of a run, drawn from the metrics file the Trainer writes.

``run_dir/metrics.jsonl`` holds one JSON object per line. ``"kind": "train"`` lines carry
``step``, ``episodes``, ``seconds``, ``loss`` and ``accuracy``; ``"kind": "val"`` lines carry
``step``, ``episodes``, ``seconds``, ``accuracy`` and ``ci95``. :func:`plot_run` turns them into a
two-panel PNG: training loss (raw, faint, plus a running mean) and train / validation accuracy
(validation with its 95% confidence interval as error bars), both against episodes seen.

Figures are drawn with matplotlib's Agg canvas directly (no ``pyplot`` global state, no display
needed) and written atomically, so a reader never sees half a PNG.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kshot.data.store import atomic_path
from kshot.errors import KShotError

__all__ = ["plot_run", "plot_sinusoid"]

_TRAIN_KEYS = ("step", "episodes", "seconds", "loss", "accuracy")
_VAL_KEYS = ("step", "episodes", "seconds", "accuracy", "ci95")


@dataclass
class _RunMetrics:
    """The well-formed records of one metrics file, split by kind, each a list of dicts."""

    train: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)


def _as_number(value: object) -> float | None:
    """``value`` as a float if it is a JSON number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _parse_record(line: str, required_keys: dict[str, tuple[str, ...]]) -> tuple[str, dict] | None:
    """Parse one metrics line; ``None`` for anything malformed, unknown or incomplete."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    kind = record.get("kind")
    if kind not in required_keys:
        return None
    values = {}
    for key in required_keys[kind]:
        number = _as_number(record.get(key))
        if number is None:
            return None
        values[key] = number
    return kind, values


def read_metrics(run_dir: str | os.PathLike) -> _RunMetrics:
    """Read ``run_dir/metrics.jsonl``, skipping malformed lines (e.g. a half line a kill left).

    Raises:
        KShotError: the file is missing or holds no usable train/val record.
    """
    metrics_path = Path(run_dir) / "metrics.jsonl"
    missing = KShotError(f"{Path(run_dir)} has no metrics.jsonl; train a model into it first")
    if not metrics_path.is_file():
        raise missing
    metrics = _RunMetrics()
    required_keys = {"train": _TRAIN_KEYS, "val": _VAL_KEYS}
    with metrics_path.open("r", encoding="utf-8", errors="replace") as metrics_file:
        for line in metrics_file:
            if not line.strip():
                continue
            parsed = _parse_record(line, required_keys)
            if parsed is None:
                continue
            kind, values = parsed
            getattr(metrics, kind).append(values)
    if not metrics.train and not metrics.val:
        raise missing
    return metrics


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean of ``values`` over ``window`` points (shorter at the start).

    Element ``i`` is the mean of ``values[max(0, i - window + 1) : i + 1]``; NaNs are ignored
    (an element whose whole window is NaN stays NaN).
    """
    if window < 1:
        raise KShotError(f"running-mean window must be >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    cumulative_sum = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    cumulative_count = np.concatenate([[0], np.cumsum(finite)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    counts = cumulative_count[ends] - cumulative_count[starts]
    sums = cumulative_sum[ends] - cumulative_sum[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def save_figure_atomically(figure: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``figure`` as a PNG at ``path`` via a temp file in the same folder and ``os.replace``.

    The parent folder is created if needed; on failure the temp file is removed and ``path`` is
    left as it was.
    """
    target = Path(path)
    FigureCanvasAgg(figure)  # attach an Agg canvas: no display, no pyplot state
    with atomic_path(target) as temp_path:
        figure.savefig(temp_path, format="png", dpi=dpi)
    return target


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw a run's training curves from ``run_dir/metrics.jsonl`` into a PNG.

    Left panel: training loss against episodes, raw (faint) and as a running mean. Right panel:
    training accuracy (raw faint, running mean) and validation accuracy with 95% CI error bars.

    Args:
        run_dir: the run folder the Trainer wrote ``metrics.jsonl`` into.
        out: where to write the PNG; default ``run_dir/curves.png``.

    Returns:
        The path of the written PNG.

    Raises:
        KShotError: ``metrics.jsonl`` is missing or holds no usable record.
    """
    run_path = Path(run_dir)
    metrics = read_metrics(run_path)
    out_path = Path(out) if out is not None else run_path / "curves.png"

    figure = Figure(figsize=(11, 4.2))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    figure.suptitle(f"run: {run_path.resolve().name}")

    if metrics.train:
        train_episodes = np.array([record["episodes"] for record in metrics.train])
        train_loss = np.array([record["loss"] for record in metrics.train])
        train_accuracy = np.array([record["accuracy"] for record in metrics.train])
        window = max(1, min(50, len(metrics.train) // 10))
        loss_axes.plot(train_episodes, train_loss, color="tab:blue", alpha=0.25, linewidth=0.8,
                       label="loss")
        loss_axes.plot(train_episodes, running_mean(train_loss, window), color="tab:blue",
                       linewidth=1.8, label=f"running mean of {window}")
        accuracy_axes.plot(train_episodes, train_accuracy, color="tab:orange", alpha=0.25,
                           linewidth=0.8)
        accuracy_axes.plot(train_episodes, running_mean(train_accuracy, window),
                           color="tab:orange", linewidth=1.8,
                           label=f"train (running mean of {window})")
        last = metrics.train[-1]
        loss_axes.set_title(
            f"training loss ({int(last['step'])} steps, {_format_seconds(last['seconds'])})"
        )
        loss_axes.legend(loc="upper right")
    else:
        loss_axes.set_title("training loss")
        loss_axes.text(0.5, 0.5, "no training records", ha="center", va="center",
                       transform=loss_axes.transAxes, color="gray")

    if metrics.val:
        val_episodes = np.array([record["episodes"] for record in metrics.val])
        val_accuracy = np.array([record["accuracy"] for record in metrics.val])
        val_ci95 = np.array([record["ci95"] for record in metrics.val])
        best_index = int(np.nanargmax(val_accuracy)) if np.isfinite(val_accuracy).any() else -1
        accuracy_axes.errorbar(val_episodes, val_accuracy, yerr=val_ci95, color="tab:green",
                               marker="o", markersize=3.5, capsize=3, linewidth=1.4,
                               label="validation (95% CI)")
        if best_index >= 0:
            accuracy_axes.annotate(
                f"best {val_accuracy[best_index]:.3f}",
                (val_episodes[best_index], val_accuracy[best_index]),
                textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8,
                color="tab:green",
            )
    accuracy_axes.set_title("accuracy")
    if metrics.train or metrics.val:
        accuracy_axes.legend(loc="lower right")

    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("episodes")
        axes.grid(True, alpha=0.3)
    loss_axes.set_ylabel("cross-entropy loss")
    accuracy_axes.set_ylabel("accuracy")
    figure.tight_layout()
    return save_figure_atomically(figure, out_path)


def _format_seconds(seconds: float) -> str:
    """Wall time as ``'42s'``, ``'3m05s'`` or ``'1h02m'``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def plot_sinusoid(path: str | os.PathLike, grid: np.ndarray, truth: np.ndarray,
                  support_x: np.ndarray, support_y: np.ndarray,
                  panels: dict[str, dict[int, np.ndarray]], title: str = "",
                  observed: np.ndarray | None = None) -> Path:
    """The book's sinusoid picture: one panel per model, each with the true curve, the ``K``
    support points, and the model's predictions after each number of adaptation steps (0: before
    any). ``observed`` (optional) are the support points' observations when the model adapted
    from those instead of the values (domain-adaptive meta-learning)."""
    figure = Figure(figsize=(5.2 * len(panels), 4.2))
    colours = ["tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for index, (name, predictions) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        axes.plot(grid, truth, color="black", linewidth=2, label="true curve")
        for colour, (steps, values) in zip(colours, sorted(predictions.items())):
            style = "--" if steps == 0 else "-"
            label = "before adaptation" if steps == 0 else f"after {steps} step{'s' * (steps > 1)}"
            axes.plot(grid, values, style, color=colour, label=label)
        axes.scatter(support_x, support_y, color="tab:blue", zorder=5,
                     label=f"the {len(support_x)} points")
        if observed is not None and name.startswith("daml"):
            axes.scatter(support_x, observed, color="tab:cyan", marker="x", zorder=5,
                         label="what DAML observes")
        axes.set_title(name)
        axes.set_xlabel("x")
        axes.legend(fontsize=7, loc="lower left")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure_atomically(figure, path)


def plot_copy(path: str | os.PathLike, panels: dict[str, dict[str, np.ndarray]],
              title: str = "") -> Path:
    """The book's copy-task picture: for each model, the target sequence against the model's output
    (bits over time), and for a model with memory the write and read weightings over time (memory
    slots against steps). ``panels`` maps a model's name to ``{"target", "output"[, "write",
    "read"]}`` arrays (``[T, bits]`` and ``[steps, slots]``)."""
    rows = sum(2 if "write" in panel else 1 for panel in panels.values())
    figure = Figure(figsize=(9, 2.4 * rows))
    row = 0
    for name, panel in panels.items():
        row += 1
        for column, key in enumerate(("target", "output")):
            axes = figure.add_subplot(rows, 2, 2 * (row - 1) + column + 1)
            axes.imshow(panel[key].T, cmap="gray_r", vmin=0, vmax=1, aspect="auto",
                        interpolation="nearest")
            axes.set_title(f"{name}: {key}", fontsize=9)
            axes.set_xlabel("step of the output phase", fontsize=8)
            axes.set_ylabel("bit", fontsize=8)
        if "write" in panel:
            row += 1
            slots = np.nonzero((panel["write"].max(0) > 0.05) | (panel["read"].max(0) > 0.05))[0]
            # the slots the heads visit; all of them when no weighting is focused anywhere
            low, high = ((int(slots.min()), int(slots.max()) + 1) if len(slots)
                         else (0, panel["write"].shape[1]))
            for column, key in enumerate(("write", "read")):
                axes = figure.add_subplot(rows, 2, 2 * (row - 1) + column + 1)
                axes.imshow(panel[key][:, low:high].T, cmap="gray_r", vmin=0, vmax=1,
                            aspect="auto", interpolation="nearest",
                            extent=(-0.5, panel[key].shape[0] - 0.5, high - 0.5, low - 0.5))
                axes.set_title(f"{name}: {key} weighting", fontsize=9)
                axes.set_xlabel("step (input, delimiter, output)", fontsize=8)
                axes.set_ylabel("memory slot", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure_atomically(figure, path)
