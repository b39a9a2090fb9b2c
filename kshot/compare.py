"""Compare runs on the same episodes: per-run scores and paired differences with their tests.

Evaluation episodes are a pure function of the seed, so runs scored with one sampler see the very
same episodes, and the per-episode accuracies pair up: the difference of two runs is measured
episode by episode, which removes the (large) variation between easy and hard episodes from it.
:func:`paired_difference` gives the mean difference, its 95% interval (1.96·std/√n, the same
normal interval as :func:`kshot.evaluate.confidence95`), the two-sided p-value of the paired
t-test and that of the Wilcoxon signed-rank test. On Lake's 20 runs the paired units are the runs'
error rates (n = 20).

:func:`compare_runs` loads the runs, checks that they can be compared (same item shape; same data
set and split unless the test set is named), chooses the test set as ``kshot eval`` does from the
first run, applies the overlap guard to every run, and scores them all; :func:`format_table`
prints the result; each run's record is the ``kshot eval --json`` one
(:func:`kshot.evaluate.eval_record`, :func:`kshot.evaluate.lake_record`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.errors import KShotError


# ---------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of ``a`` and ``b``: statistics of the differences ``a - b``."""

    mean: float
    """Mean of ``a - b`` (in the units of the inputs)."""
    ci95: float
    """Half-width of the normal 95% interval of the mean: 1.96 · std / √n (population std)."""
    p_value: float
    """Two-sided p-value of the paired t-test (1.0 when every difference is zero)."""
    p_wilcoxon: float
    """Two-sided p-value of the Wilcoxon signed-rank test (zeros split between the signs)."""
    n: int
    """Number of pairs."""
    n_positive: int
    """Pairs where ``a > b``."""
    n_negative: int
    """Pairs where ``a < b``."""
    n_zero: int
    """Pairs where ``a == b``."""


def paired_t_pvalue(differences: np.ndarray) -> float:
    """Two-sided p-value of the one-sample t-test of mean 0 on ``differences`` (n - 1 d.f.).

    Every difference zero: 1.0; all equal and non-zero (no spread): 0.0; fewer than 2: 1.0.
    """
    from scipy.stats import t as t_distribution

    d = np.asarray(differences, dtype=np.float64)
    n, mean = len(d), float(d.mean()) if len(d) else 0.0
    if n < 2 or not np.any(d):
        return 1.0
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(abs(mean), 1e-300):  # no spread: every difference is the same
        return 0.0 if mean != 0 else 1.0
    t = mean / (sd / math.sqrt(n))
    return float(min(1.0, 2 * t_distribution.sf(abs(t), n - 1)))


def wilcoxon_pvalue(differences: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test (``zero_method="zsplit"``).

    Every difference zero (or fewer than 2): 1.0.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2 or not np.any(d):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # normal approximation with ties: expected here
        p = float(wilcoxon(d, zero_method="zsplit").pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


def paired_difference(a: Sequence[float] | np.ndarray | torch.Tensor,
                      b: Sequence[float] | np.ndarray | torch.Tensor) -> PairedResult:
    """Mean paired difference ``a - b``, its 95% interval and two paired tests' p-values.

    ``a`` and ``b`` are scores of two learners on the same units (episodes, Lake's runs), in the
    same order; the result is in their units (percent in, percentage points out).
    """
    from kshot.evaluate import confidence95

    a_values = _as_float64(a)
    b_values = _as_float64(b)
    if a_values.shape != b_values.shape or a_values.ndim != 1:
        raise KShotError(f"paired scores must be two 1-d sequences of one length, got shapes "
                         f"{a_values.shape} and {b_values.shape}")
    if len(a_values) == 0:
        raise KShotError("paired scores are empty; score at least one episode")
    if not (np.isfinite(a_values).all() and np.isfinite(b_values).all()):
        raise KShotError("paired scores hold NaN or infinite values")
    d = a_values - b_values
    return PairedResult(mean=float(d.mean()), ci95=confidence95(torch.from_numpy(d)),
                        p_value=paired_t_pvalue(d), p_wilcoxon=wilcoxon_pvalue(d), n=len(d),
                        n_positive=int((d > 0).sum()), n_negative=int((d < 0).sum()),
                        n_zero=int((d == 0).sum()))


def _as_float64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------------------- comparing runs
@dataclass
class RunScore:
    """One run's score in a comparison."""

    label: str
    run_dir: str
    method: str
    record: dict[str, Any]
    """Its ``kshot eval --json`` record."""
    values: torch.Tensor = field(repr=False)
    """Per-unit scores in percent (float64): accuracy per episode, or error per Lake run."""
    mean: float
    ci95: float
    units_per_second: float
    note: str | None = None
    """Why the checkpoint scored is not the one asked for (from :func:`load_run`)."""


@dataclass
class PairComparison:
    a: int
    """Index of the first run (the difference is run ``a`` minus run ``b``)."""
    b: int
    result: PairedResult


@dataclass
class ComparisonResult:
    runs: list[RunScore]
    pairs: list[PairComparison]
    metric: str
    """``accuracy`` (episodes) or ``error`` (Lake's 20 runs); both in percent."""
    test_set: str
    test_classes: int | None
    ways: int
    shots: int
    queries: int | None
    episodes: int
    seed: int | None

    def pair_records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per pair (``kind: pair``); differences in percentage points."""
        records = []
        for pair in self.pairs:
            run_a, run_b, result = self.runs[pair.a], self.runs[pair.b], pair.result
            records.append({
                "kind": "pair", "metric": self.metric, "run_a": run_a.run_dir,
                "run_b": run_b.run_dir, "method_a": run_a.method, "method_b": run_b.method,
                "test_set": self.test_set, "ways": self.ways, "shots": self.shots,
                "queries": self.queries, "episodes": result.n, "seed": self.seed,
                "difference": round(result.mean, 3), "ci95": round(result.ci95, 3),
                "p_value": result.p_value, "p_wilcoxon": result.p_wilcoxon,
                "a_higher": result.n_positive, "b_higher": result.n_negative,
                "equal": result.n_zero})
        return records


def _labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """The run directory's name; its path where names repeat; ``#position`` where paths repeat."""
    names = [Path(run_dir).name or str(run_dir) for run_dir in run_dirs]
    labels = [name if names.count(name) == 1 else str(run_dir)
              for name, run_dir in zip(names, run_dirs)]
    return [label if labels.count(label) == 1 else f"{label}#{position}"
            for position, label in enumerate(labels, 1)]


def _read_configs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    from kshot.checkpoint import read_run_config

    if len(run_dirs) < 2:
        raise KShotError(f"compare needs at least 2 run directories, got {len(run_dirs)}; pass "
                         "two or more `kshot train` --out directories")
    configs = []
    for run_dir in run_dirs:
        if not Path(run_dir).is_dir():
            raise KShotError(f"run directory {run_dir} does not exist; pass the --out directory "
                             "of a `kshot train` run")
        configs.append(read_run_config(run_dir))
    return configs


def _check_comparable(run_dirs: Sequence[str | Path], configs: list[dict[str, Any]],
                      same_data: bool) -> None:
    from kshot.datasets import DEFAULT_SPLITS

    first_dir, first = run_dirs[0], configs[0]["data"]
    for run_dir, config in zip(run_dirs[1:], configs[1:]):
        data = config["data"]
        if tuple(data["item_shape"][:-2]) != tuple(first["item_shape"][:-2]):
            raise KShotError(f"{run_dir} works on items of shape {tuple(data['item_shape'])} but "
                             f"{first_dir} on {tuple(first['item_shape'])}; compare runs whose "
                             "items have the same channels")
        if not same_data:
            continue
        if data["dataset"] != first["dataset"]:
            raise KShotError(f"{run_dir} was trained on {data['dataset']} but {first_dir} on "
                             f"{first['dataset']}; compare runs of one data set, or name the test "
                             "set with --dataset")
        split = data["split"] or DEFAULT_SPLITS.get(data["dataset"])
        first_split = first["split"] or DEFAULT_SPLITS.get(first["dataset"])
        if split != first_split:
            raise KShotError(f"{run_dir} was trained on the {split} split but {first_dir} on "
                             f"{first_split}; compare runs of one split, or name the test set "
                             "with --dataset and --split")


def _check_same_items(datasets: Sequence[Any]) -> None:
    """Refuse test sets (one per image size) whose episodes of one seed would not be the same
    items: their classes or class sizes differ."""
    from kshot.protocol import class_ids

    first = datasets[0]
    for other in datasets[1:]:
        if class_ids(other) != class_ids(first) or not torch.equal(other.sizes, first.sizes):
            raise KShotError(f"{first.name} at {tuple(first.item_shape)} and at "
                             f"{tuple(other.item_shape)} do not hold the same classes and items, so "
                             "the runs cannot be scored on the same episodes; compare runs trained "
                             "with the same --image-size")


def compare_runs(
    run_dirs: Sequence[str | Path],
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 123,
    batch_size: int = 16,
    lake_runs: bool = False,
    dataset: str | None = None,
    split: str | None = None,
    folder: str | Path | None = None,
    test_rotations: bool | None = None,
    allow_overlap: bool = False,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
    test_options: dict[str, str] | None = None,
    subset: str = "test",
) -> ComparisonResult:
    """Score every run on the same episodes (one ``seed``) and compare each pair.

    The test set is chosen as ``kshot eval`` chooses it, from the first run (``dataset`` /
    ``split`` / ``folder`` / ``test_rotations`` as its options), or Lake's 20 runs with
    ``lake_runs``. Each run is scored at its own image size: the test set is loaded once per size
    and every episode holds the same items at each. The runs must share their channels, and,
    unless the test set is named (``dataset`` or ``lake_runs``), their data set and split. Every
    run passes the overlap guard (:func:`kshot.protocol.check_overlap`) before any is scored.
    ``on_note`` receives the note of a run whose scored checkpoint is not the one asked for.
    ``test_options`` (``kshot compare --set``) apply to each run whose method has them; one that
    no run's method has is refused. ``subset`` ``val`` scores the split's validation classes
    instead of its test classes (choosing test-time options; not a test figure).
    """
    from kshot.checkpoint import load_run
    from kshot.data.episodes import EpisodeSampler
    from kshot.data.omniglot import load_lake_runs
    from kshot.evaluate import (
        check_scored_subset,
        confidence95,
        eval_record,
        evaluate,
        evaluate_lake_runs,
        lake_record,
        load_test_data,
    )
    from kshot.protocol import check_overlap, class_ids, lake_run_class_ids

    check_scored_subset(subset, lake_runs)
    configs = _read_configs(run_dirs)
    _check_comparable(run_dirs, configs, same_data=dataset is None and not lake_runs)
    # each run is scored at its own --image-size: the test set is loaded once per size, and the
    # samplers of one seed draw the same items from each (checked: same classes, same sizes)
    image_sizes = [config["data"]["item_shape"][-1] for config in configs]
    # everything that can refuse (test set, overlap, checkpoints) happens before any scoring
    if lake_runs:
        lake = {size: load_lake_runs(size, data_dir) for size in dict.fromkeys(image_sizes)}
        scored, what = lake_run_class_ids(data_dir), "Lake's 20 runs"
    else:
        samplers = {}
        for size in dict.fromkeys(image_sizes):
            dataset, split, test_data = load_test_data(configs[0]["data"], size, dataset, split,
                                                       folder, test_rotations, data_dir, progress,
                                                       subset)
            samplers[size] = EpisodeSampler(test_data, ways, shots, queries, seed=seed)
        _check_same_items([sampler.dataset for sampler in samplers.values()])
        scored, what = class_ids(test_data), test_data.name
    overlaps = [check_overlap(run_dir, scored, what, allow_overlap, subset) for run_dir in run_dirs]
    options = [_options_for(config["method"], test_options or {}) for config in configs]
    unused = set(test_options or {}) - {name for chosen in options for name in chosen}
    if unused:
        raise KShotError(f"--set {', '.join(sorted(unused))}: not a test-time option of any of "
                         f"these runs' methods ({', '.join(sorted({c['method'] for c in configs}))})")
    loaded = [load_run(run_dir, test_options=chosen) for run_dir, chosen in zip(run_dirs, options)]

    scores = []
    for run_dir, label, overlap, chosen_options, size, (learner, run_config, checkpoint) in zip(
            run_dirs, _labels(run_dirs), overlaps, options, image_sizes, loaded):
        if checkpoint.get("note") and on_note is not None:
            on_note(checkpoint["note"])
        learner.to(device)
        if lake_runs:
            result = evaluate_lake_runs(learner, lake[size], device=device)
            record = lake_record(run_dir, run_config, checkpoint, result, overlap)
            values = torch.tensor(result["per_run"], dtype=torch.float64)
            mean, ci95 = float(values.mean()), confidence95(values)
            rate = len(values) / result["seconds"] if result["seconds"] > 0 else float("inf")
        else:
            report = evaluate(learner, samplers[size], episodes, batch_size=batch_size,
                              device=device, progress=progress)
            record = eval_record(run_dir, run_config, checkpoint, report,
                                 samplers[size].dataset, dataset,
                                 split, overlap, chosen_options)
            values = report.per_episode.double() * 100
            mean, ci95 = report.accuracy * 100, report.ci95 * 100
            rate = report.episodes_per_second
        learner.to("cpu")
        scores.append(RunScore(label, str(run_dir), run_config["method"], record, values, mean,
                               ci95, rate, checkpoint.get("note")))
    pairs = [PairComparison(i, j, paired_difference(scores[i].values, scores[j].values))
             for i in range(len(scores)) for j in range(i + 1, len(scores))]
    if lake_runs:
        return ComparisonResult(scores, pairs, "error", "lake-runs", None, 20, 1, None,
                                len(scores[0].values), None)
    return ComparisonResult(scores, pairs, "accuracy", test_data.name, test_data.n_classes, ways,
                            shots, queries, episodes, seed)


def _options_for(method: str, test_options: dict[str, str]) -> dict[str, str]:
    from kshot.methods.base import get_method

    allowed = get_method(method).test_options
    return {name: value for name, value in test_options.items() if name in allowed}


# ---------------------------------------------------------------------------- the table
def format_p(p: float) -> str:
    """A p-value for the table: 3 decimals, scientific below 0.001, ``<1e-300`` at underflow."""
    if p <= 0:
        return "<1e-300"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]
    return ["  ".join(cell.rjust(width) if col in right else cell.ljust(width)
                      for col, (cell, width) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *rows]]


def format_table(comparison: ComparisonResult) -> str:
    """The comparison as text: one row per run, then one row per pair of runs."""
    c = comparison
    accuracy = c.metric == "accuracy"
    if accuracy:
        title = (f"{c.test_set} ({c.test_classes} classes): {c.ways}-way {c.shots}-shot, "
                 f"{c.queries} queries, {c.episodes} episodes, seed {c.seed}")
    else:
        title = "Lake's 20 runs: 20-way 1-shot within an alphabet; error per run (n = 20)"
    speed = "episodes/s" if accuracy else "runs/s"
    rows = [[run.label, run.method, run.record["checkpoint"],
             f"{run.mean:.2f} ± {run.ci95:.2f}", f"{run.units_per_second:.0f}"]
            for run in c.runs]
    lines = [title, *_table(["run", "method", "checkpoint", f"{c.metric} %", speed], rows,
                            {3, 4})]
    for run in c.runs:
        overlap = run.record["overlap"]
        if overlap > 0:
            lines.append(f"note: {run.label}: {overlap} of the scored classes were seen in "
                         "training or validation")
        elif overlap < 0:
            lines.append(f"note: {run.label}: no record of the classes it saw; overlap unchecked")
    unit = "episodes" if accuracy else "runs"
    lines += ["", (f"paired {c.metric} difference a − b in percentage points (± 95% CI) over "
                   f"the same {c.runs[0].values.numel()} {unit}; two-sided p-values")]
    pair_rows = [[c.runs[p.a].label, c.runs[p.b].label,
                  f"{p.result.mean:+.2f} ± {p.result.ci95:.2f}",
                  f"{p.result.n_positive}/{p.result.n_negative}/{p.result.n_zero}",
                  format_p(p.result.p_value), format_p(p.result.p_wilcoxon)] for p in c.pairs]
    lines += _table(["a", "b", "difference", "a>b/a<b/=", "p (paired t)", "p (Wilcoxon)"],
                    pair_rows, {2, 3, 4, 5})
    return "\n".join(lines)
