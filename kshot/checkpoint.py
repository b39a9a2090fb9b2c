"""Run directories and checkpoints: safetensors weights plus JSON metadata, written atomically.

A run directory holds

* ``config.json``: method, method config, training config, data (dataset, split, image size,
  item shape), seed and kshot version: everything needed to rebuild the learner;
* ``best.safetensors`` / ``best.json``: the weights with the best validation accuracy so far;
* ``last.safetensors`` / ``last.json``: the latest state (weights, optimiser state, step), for resume;
* ``metrics.jsonl``: one JSON object per log line (``kind`` = ``train`` or ``val``).

The metadata travels inside the safetensors header too (key ``kshot``), so a weights file is
self-describing and the pair can never disagree; the ``.json`` beside it is a readable copy. Files
are written to a temporary name and renamed, so a kill leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from kshot import __version__
from kshot.data.store import atomic_path, atomic_write_bytes
from kshot.errors import KShotError

CONFIG = "config.json"


def save_checkpoint(run_dir: str | Path, stem: str, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` (with ``metadata`` in its header) and ``<stem>.json``."""
    run_dir = Path(run_dir)
    metadata = {**metadata, "kshot_version": __version__}
    text = json.dumps(metadata, sort_keys=True)
    path = run_dir / f"{stem}.safetensors"
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"kshot": text})
    atomic_write_bytes(run_dir / f"{stem}.json", (json.dumps(metadata, indent=2) + "\n").encode())
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
        metadata = json.loads(header["kshot"])
    except FileNotFoundError:
        raise KShotError(f"{path} does not exist; train a model into {path.parent} first") from None
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise KShotError(f"{path} is not a readable kshot checkpoint ({exc}); retrain the run or "
                         "restore the file") from None
    return tensors, metadata


def write_run_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {**config, "kshot_version": __version__}
    atomic_write_bytes(run_dir / CONFIG, (json.dumps(payload, indent=2) + "\n").encode())


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise KShotError(f"{run_dir} is not a kshot run directory (no {CONFIG}); pass the --out "
                         "directory of a `kshot train` run")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KShotError(f"{path} is unreadable ({exc}); retrain the run") from None


def learner_state(learner: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{name}": tensor for name, tensor in learner.state_dict().items()}


def load_learner_state(learner: torch.nn.Module, tensors: dict[str, torch.Tensor],
                       source: str | Path) -> None:
    """Load the ``model.*`` tensors into ``learner``; a mismatch is a user error, not a crash."""
    state = {name[len("model."):]: t for name, t in tensors.items() if name.startswith("model.")}
    expected = learner.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(n for n in set(state) & set(expected) if state[n].shape != expected[n].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape differs for {wrong[:3]}" if wrong else "") if part)
        raise KShotError(f"checkpoint {source} does not match its config ({detail}); retrain the "
                         "run, or fix the edited config.json")
    learner.load_state_dict(state)


def load_run(run_dir: str | Path, which: str = "auto", method: str | None = None,
             test_options: dict[str, str] | None = None):
    """Rebuild the learner of a run and load the weights it is scored with.

    ``which`` is ``best`` (the checkpoint selected on validation classes), ``last`` (the final
    state), or ``auto``: ``best`` when the run selected one, else ``last`` (a run without
    validation, e.g. trained on trainval, keeps its last checkpoint). Returns ``(learner,
    run_config, checkpoint_metadata)``; the metadata's ``checkpoint`` says which was loaded and
    ``note`` why, when that is not the one asked for. ``method`` (when given) must match.
    ``test_options`` (``{field: value as text}``) changes test-time fields of the method's config
    (its ``test_options``, e.g. MAML's test steps or batch-norm mode) before the learner is built.
    """
    from kshot.methods.base import build_learner

    if which not in ("auto", "best", "last"):
        raise KShotError(f"unknown checkpoint {which!r}; use best, last or auto")
    run_config = read_run_config(run_dir)
    if method is not None and run_config.get("method") != method:
        raise KShotError(f"{run_dir} holds a {run_config.get('method')!r} run, not {method!r}; pass "
                         f"a run directory of {method!r} or the matching method name")
    item_shape = tuple(run_config["data"]["item_shape"])
    method_config = dict(run_config["method_config"])
    if test_options:
        method_config.update(typed_test_options(run_config["method"], method_config, test_options))
    learner = build_learner(run_config["method"], method_config, item_shape)
    chosen, note = which, None
    if which == "auto":
        chosen = "best" if (Path(run_dir) / "best.safetensors").is_file() else "last"
        if chosen == "last" and _selects_on_validation(run_dir):
            note = (f"{run_dir} has no best checkpoint yet (no validation has run): scoring its "
                    "last checkpoint")
    path = Path(run_dir) / f"{chosen}.safetensors"
    tensors, metadata = load_checkpoint(path)
    if metadata.get("method") not in (None, run_config["method"]):
        raise KShotError(f"{path} is a {metadata.get('method')!r} checkpoint but {run_dir} is a "
                         f"{run_config['method']!r} run; retrain the run")
    load_learner_state(learner, tensors, path)
    learner.eval()
    return learner, run_config, {**metadata, "checkpoint": chosen, "note": note}


def typed_test_options(method: str, method_config: dict[str, Any],
                       options: dict[str, str]) -> dict[str, Any]:
    """``options`` (text values) typed like the run's config fields; a field that is not one of the
    method's test-time options is refused with the list of those it has."""
    from kshot.methods.base import get_method

    allowed = get_method(method).test_options
    typed = {}
    for name, text in options.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise KShotError(f"--set {name}: not a test-time option of {method} (its test-time "
                             f"options: {known})")
        current = method_config.get(name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                typed[name] = text.lower() in ("true", "1", "yes")
            else:
                typed[name] = type(current)(text) if current is not None else text
        except ValueError:
            raise KShotError(f"--set {name}={text}: expected a {type(current).__name__}") from None
    return typed


def _selects_on_validation(run_dir: str | Path) -> bool:
    """Whether a run selects its best checkpoint on validation classes (it recorded some)."""
    from kshot.protocol import read_seen

    try:
        return bool(read_seen(run_dir)["val"])
    except KShotError:
        return False


def load_run_backbone(run_dir: str | Path, item_shape: tuple[int, ...]) -> torch.nn.Module:
    """The trained backbone of another run (for kNN on a learned embedding)."""
    learner, run_config, _ = load_run(run_dir)
    if not hasattr(learner, "backbone"):
        raise KShotError(f"{run_dir} ({run_config['method']}) has no backbone to embed with")
    if tuple(run_config["data"]["item_shape"]) != tuple(item_shape):
        raise KShotError(f"{run_dir} was trained on items of shape "
                         f"{tuple(run_config['data']['item_shape'])}, not {tuple(item_shape)}; "
                         "use the same --image-size")
    return learner.backbone
