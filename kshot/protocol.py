"""A run knows what it saw: the classes it trained and validated on, and the guard that refuses to
score it on them.

Classes are named by stable ids, ``<namespace>:<class name>``: ``omniglot:Korean/character05@rot90``,
``mnist:3``, ``digits:7``, ``folder:cat``. Every run directory holds ``classes.json``
(``{"train": [...], "val": [...], "inherited": [...]}``; ``inherited`` are the classes another run
saw when its weights are reused, e.g. kNN on the embedding of a trained run). Overlap is counted
per *source class*: a rotation of a character the run saw counts as seen (its images are the same
drawings), so ``omniglot:Korean/character05@rot90`` and ``omniglot:Korean/character05`` are one
class for the guard.

Every evaluation path (``kshot eval`` on episodes and on Lake's runs, ``--embedding-run``,
:class:`kshot.classifier.FewShotClassifier`) calls :func:`check_overlap`: it refuses with a
:class:`KShotError` that names how many scored classes the run saw, unless told to allow it, and
returns the count that every ``--json`` line carries as ``"overlap"``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kshot.data.dataset import ClassDataset
from kshot.data.store import atomic_write_bytes
from kshot.errors import KShotError

CLASSES_FILE = "classes.json"
_ROTATION = re.compile(r"@rot\d+$")


def class_ids(dataset: ClassDataset) -> list[str]:
    """Stable ids of a dataset's classes, in class order (``<namespace>:<class name>``).

    The namespace is ``meta["namespace"]`` (set by every loader of :mod:`kshot.datasets`), else the
    first part of the dataset's name."""
    namespace = dataset.meta.get("namespace") or dataset.name.split("/")[0]
    return [f"{namespace}:{name}" for name in dataset.class_names]


def source_class(class_id: str) -> str:
    """The class a class id is drawn from: the id without its rotation suffix."""
    return _ROTATION.sub("", class_id)


def write_seen(run_dir: str | Path, train: Iterable[str], val: Iterable[str] = (),
               inherited: Iterable[str] = ()) -> None:
    """Record (atomically) the classes a run trains and validates on, and those it inherits."""
    record = {"train": sorted(set(train)), "val": sorted(set(val)),
              "inherited": sorted(set(inherited))}
    atomic_write_bytes(Path(run_dir) / CLASSES_FILE, (json.dumps(record, indent=0) + "\n").encode())


def read_seen(run_dir: str | Path) -> dict[str, list[str]]:
    """The ``classes.json`` record of a run (a user error when the run has none)."""
    path = Path(run_dir) / CLASSES_FILE
    if not path.is_file():
        raise KShotError(f"{run_dir} has no {CLASSES_FILE} (a run from before kshot recorded the "
                         "classes it saw): retrain it, or pass --allow-overlap to score it without "
                         "the check")
    try:
        record = json.loads(path.read_text())
        return {key: list(record.get(key, [])) for key in ("train", "val", "inherited")}
    except (OSError, ValueError, AttributeError) as exc:
        raise KShotError(f"{path} is unreadable ({exc}); retrain the run") from None


def count_overlap(seen: Iterable[str], scored: Iterable[str]) -> tuple[int, int, list[str]]:
    """``(overlapping, scored, examples)``: scored source classes (rotations folded) in ``seen``."""
    seen_sources = {source_class(c) for c in seen}
    scored_sources = {source_class(c) for c in scored}
    both = sorted(scored_sources & seen_sources)
    return len(both), len(scored_sources), both[:3]


def check_overlap_sets(seen: Iterable[str], scored: Iterable[str], what: str, whose: str,
                       allow: bool = False) -> int:
    """The number of scored classes in ``seen``; a :class:`KShotError` when any and not ``allow``.

    ``what`` names the scored set (e.g. ``omniglot/lake/test``), ``whose`` the run that saw them.
    """
    overlap, total, examples = count_overlap(seen, scored)
    if overlap and not allow:
        raise KShotError(
            f"{overlap} of the {total} classes of {what} were seen by {whose} in training or "
            f"validation (e.g. {', '.join(examples)}): a score there would not measure learning "
            "from one or a few examples. Score on classes it never saw (its split's test set), or "
            "pass --allow-overlap to score anyway (the count is reported)")
    return overlap


def check_overlap(run_dir: str | Path, scored: Iterable[str], what: str,
                  allow: bool = False, subset: str = "test") -> int:
    """:func:`check_overlap_sets` against what ``run_dir`` recorded (-1 when allowed without a record).

    ``subset`` ``val`` scores the run's own validation classes: those are then not counted as
    seen (they chose its checkpoint, which is why such a score is not a test figure), its training
    classes and inherited ones still are."""
    try:
        record = read_seen(run_dir)
    except KShotError:
        if allow:
            return -1
        raise
    seen = [c for part, classes in record.items() if not (subset == "val" and part == "val")
            for c in classes]
    return check_overlap_sets(seen, scored, what, str(run_dir), allow)


def inherited_classes(method_config: object) -> list[str]:
    """Every class seen by the runs whose weights a method config reuses (fields ``*_run``)."""
    from dataclasses import fields, is_dataclass

    if not is_dataclass(method_config):
        return []
    inherited: set[str] = set()
    for f in fields(method_config):
        run_dir = getattr(method_config, f.name)
        if f.name.endswith("_run") and run_dir:
            inherited.update(c for part in read_seen(run_dir).values() for c in part)
    return sorted(inherited)


# ---------------------------------------------------------------------------- Lake's 20 runs
def _binarised_key(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.packbits(np.asarray(image.convert("1"), dtype=bool)).tobytes()


def _lake_run_characters(runs_path: Path, evaluation_path: Path) -> dict[str, np.ndarray]:
    """Match every image of Lake's runs to the evaluation-archive image it is (binarised, 105×105)."""
    item = re.compile(r"^images_evaluation/([^/]+)/(character\d+)/[^/]+\.png$")
    index: dict[bytes, str] = {}
    with zipfile.ZipFile(evaluation_path) as archive:
        for member in archive.namelist():
            match = item.match(member)
            if match:
                index[_binarised_key(archive.read(member))] = f"{match.group(1)}/{match.group(2)}"
    characters = np.empty((20, 2, 20), dtype=object)  # [run, training/test, index]
    with zipfile.ZipFile(runs_path) as archive:
        for run in range(20):
            for part, (folder, stem) in enumerate((("training", "class"), ("test", "item"))):
                for position in range(20):
                    member = f"run{run + 1:02d}/{folder}/{stem}{position + 1:02d}.png"
                    character = index.get(_binarised_key(archive.read(member)))
                    if character is None:
                        raise KShotError(f"{runs_path}:{member} matches no image of "
                                         f"{evaluation_path}; are both the official files?")
                    characters[run, part, position] = character
    return {"characters": characters.astype(str)}


def lake_run_class_ids(data_dir: str | Path | None = None) -> list[str]:
    """The Omniglot class ids of the characters Lake's 20 runs draw on, found from the data.

    Each of the 800 images of ``all_runs.zip`` is, once binarised, pixel for pixel an image of
    ``images_evaluation.zip``; the characters those images belong to are the runs' classes (200
    characters of 10 evaluation alphabets). Computed once (about 2 s) and cached.
    """
    from kshot.data.omniglot import ARCHIVES, LAKE_RUNS
    from kshot.data.store import cached_arrays, fetch

    runs_path = fetch(LAKE_RUNS, data_dir)
    evaluation_path = fetch(ARCHIVES["images_evaluation"][0], data_dir)
    key = (f"omniglot-all_runs-characters-{runs_path.stat().st_size}-"
           f"{evaluation_path.stat().st_size}")
    arrays = cached_arrays(key, lambda: _lake_run_characters(runs_path, evaluation_path))
    return sorted({f"omniglot:{c}" for c in arrays["characters"].ravel().tolist()})
