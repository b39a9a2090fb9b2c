"""Helpers shared by the ``kshot`` commands: one-line errors, options from config dataclasses."""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any

from kshot.errors import KShotError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``kshot: error: ...``) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"kshot: error: {message} (see `{self.prog} --help`)\n")


def field_docs(config_type: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass (for --help)."""
    try:
        tree = ast.parse(inspect.getsource(config_type))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs, body = {}, tree.body[0].body
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = str(following.value.value)
    return docs


def add_config_options(parser: argparse.ArgumentParser, config_type: type, prefix: str,
                       skip: Sequence[str] = (), shown_defaults: Mapping[str, str] | None = None
                       ) -> None:
    """One ``--option`` per dataclass field, typed from its default; dest = ``prefix + name``.
    ``shown_defaults`` replaces the default the help names where something else (a method's
    training defaults) sets the field."""
    docs = field_docs(config_type)
    for f in fields(config_type):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        shown = (shown_defaults or {}).get(f.name, default)
        help_text = f"{docs.get(f.name, '')} (default: {shown})"
        dest, metavar = prefix + f.name, f.name.upper()
        if isinstance(default, bool):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=dest, nargs="+", type=type(default[0]) if default
                                else int, default=None, metavar=metavar, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, type=type(default), default=None, metavar=metavar,
                                help=help_text)


def collect_config(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The options given on the command line for one config (those left out keep defaults)."""
    return {key[len(prefix):]: value for key, value in vars(args).items()
            if key.startswith(prefix) and value is not None}


def set_threads(threads: int | None, compile: bool | None = None) -> None:
    from kshot.runtime import configure_cpu

    configure_cpu(threads, compile)


def resolve_device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KShotError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return name


def print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def add_episode_options(sub: argparse.ArgumentParser, *, ways: int | None = 5,
                        shots: bool = True, dataset_help: str = "score on another data set "
                        "(transfer)", overlap_help: str = "the JSON line counts them") -> None:
    """The test episodes and held-out test set a run is scored on, shared by ``kshot eval``,
    ``kshot compare`` and ``kshot santoro``: --ways, --episodes, --seed, --batch-size; --shots,
    --queries and --set unless ``shots`` is false (Santoro's episodes fix their own); and the test
    set: --dataset, --split, --folder, --test-rotations, --allow-overlap, --subset. ``ways`` None
    means the run's training way."""
    from kshot.datasets import DATASETS
    from kshot.evaluate import SCORED_SUBSETS

    sub.add_argument("--ways", type=int, default=ways, help="classes per episode" + (
        "" if ways else " (default: the run's training --ways)"))
    if shots:
        sub.add_argument("--shots", type=int, default=1)
        sub.add_argument("--queries", type=int, default=15)
    sub.add_argument("--episodes", type=int, default=1000)
    sub.add_argument("--seed", type=int, default=123, help="seed of the test episodes")
    sub.add_argument("--batch-size", type=int, default=16, help="episodes per forward pass")
    if shots:
        sub.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                         dest="test_options", help="a test-time option of the run's method, e.g. "
                         "MAML's test_inner_steps=10 or norm=running (repeatable)")
    sub.add_argument("--dataset", choices=DATASETS, help=dataset_help)
    sub.add_argument("--split", help="split of --dataset (default: the run's)")
    sub.add_argument("--folder", help="root of --dataset folder")
    sub.add_argument("--test-rotations", action=argparse.BooleanOptionalAction, default=None,
                     help="Omniglot test characters rotated by 90/180/270 as extra classes "
                     "(default: the split's convention: on for vinyals, off for lake)")
    sub.add_argument("--allow-overlap", action="store_true", help="score classes the run trained "
                     f"or validated on anyway (refused by default; {overlap_help})")
    sub.add_argument("--subset", choices=SCORED_SUBSETS, default="test",
                     help="the split's held-out test classes (default), or its validation classes: "
                     "to choose test-time options (--set) without looking at the test set; a "
                     "score there is marked \"subset\": \"val\" and is not a test figure")


def parse_test_options(items: Sequence[str]) -> dict[str, str]:
    """``["field=value", ...]`` (the ``--set`` options) as a dict of text values."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise KShotError(f"--set {item!r}: write FIELD=VALUE, e.g. --set test_inner_steps=10")
        options[name.strip().replace("-", "_")] = value.strip()
    return options


def add_runtime_options(sub: argparse.ArgumentParser) -> None:
    """--data-dir, --threads, --device, --compile: shared by the commands that run a model."""
    sub.add_argument("--data-dir", help="folder of the official archives (default: "
                     "$KSHOT_DATA_DIR, else a user cache dir)")
    sub.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    sub.add_argument("--device", default="cpu", help="cpu or cuda")
    sub.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="compiled / fused backbones (default: on, unless KSHOT_COMPILE=0); "
                     "results are unchanged within float tolerance")


def load_test_set(args: argparse.Namespace, run_config: dict[str, Any], image_size: int):
    """The held-out test set ``kshot eval`` and ``kshot santoro`` score a run on: the data set and
    split the options (or the run) name, loaded at the run's image size, checked against the
    classes the run saw (refused unless ``--allow-overlap``). Returns ``(dataset, split, test_data,
    overlap)``."""
    from kshot.evaluate import load_test_data
    from kshot.protocol import check_overlap, class_ids

    dataset, split, test_data = load_test_data(
        run_config["data"], image_size, args.dataset, args.split, args.folder,
        args.test_rotations, args.data_dir, progress=not args.json, subset=args.subset)
    overlap = check_overlap(args.run_dir, class_ids(test_data), test_data.name, args.allow_overlap,
                            subset=args.subset)
    return dataset, split, test_data, overlap
