"""``kshot train METHOD``: train a method episodically into a run directory."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from kshot.cli.common import (
    OneLineParser,
    add_config_options,
    add_runtime_options,
    collect_config,
    resolve_device,
    set_threads,
)
from kshot.errors import KShotError


def method_train_defaults(method_cls) -> dict[str, str]:
    """The training defaults a method sets, as ``--help`` names them: one value, or the 1-shot and
    the 5-shot value where the shot changes it (MAML's queries, the LSTM meta-learner's
    meta-batch)."""
    one, five = method_cls.train_defaults(None, 1), method_cls.train_defaults(None, 5)
    return {name: str(one[name]) if one[name] == five[name]
            else f"{one[name]} at 1-shot, {five[name]} at 5-shot"
            for name in one.keys() & five.keys()}


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from kshot.checkpoint import read_run_config, write_run_config
    from kshot.datasets import load_dataset
    from kshot.methods.base import build_learner, config_from_dict, config_to_dict, get_method
    from kshot.protocol import check_overlap_sets, class_ids, inherited_classes
    from kshot.train import TrainConfig, Trainer

    set_threads(args.threads, args.compile)
    device = resolve_device(args.device)
    out = Path(args.out)
    method_cls = get_method(args.method)
    existing = (out / "config.json").is_file()
    if existing:
        stored = read_run_config(out)
        if stored.get("method") != args.method:
            raise KShotError(f"{out} holds a {stored.get('method')!r} run, not {args.method!r}; "
                             "choose another --out directory")
        if not args.resume:
            raise KShotError(f"{out} already holds a run; pass --resume to continue it or choose "
                             "another --out directory")
        method_config = config_from_dict(method_cls.Config, stored["method_config"])
        train_config = config_from_dict(TrainConfig, stored["train_config"])
        data = stored["data"]
    else:
        given = collect_config(args, "t_")
        ways, shots = given.get("ways"), given.get("shots", TrainConfig.shots)
        train_config = config_from_dict(TrainConfig,
                                        {**method_cls.train_defaults(ways, shots), **given})
        method_config = config_from_dict(method_cls.Config, {
            **method_cls.config_defaults(train_config), **collect_config(args, "m_")})
        data = {"dataset": args.dataset, "split": args.split, "image_size": args.image_size,
                "rotations": args.rotations, "train_subset": args.train_on,
                "folder": str(args.folder) if args.folder else None}
    # everything that can fail on bad input happens before anything is written
    common = {"split": data["split"], "image_size": data["image_size"],
              "data_dir": args.data_dir, "folder": data["folder"], "progress": not args.quiet}
    train_data = load_dataset(data["dataset"], subset=data["train_subset"],
                              rotations=data["rotations"], **common)
    # validation selects the best checkpoint, so it must be on classes the run does not train on:
    # a trainval run keeps its last checkpoint (a schedule fixed beforehand, as Snell et al.)
    val_data = None
    if data["dataset"] == "omniglot" and data["train_subset"] == "train":
        val_data = load_dataset(data["dataset"], subset="val", **common)
    data["item_shape"] = list(train_data.item_shape)
    torch.manual_seed(train_config.seed)
    learner = build_learner(args.method, method_config, train_data.item_shape)
    trainer = Trainer(learner, train_config, out, train_data, val_data, device=device,
                      progress=not args.quiet)
    if not existing:
        inherited = inherited_classes(method_config)
        if inherited:  # reused weights: refuse now if this run's own test set is what they saw
            test_data = load_dataset(data["dataset"], subset="test", **common)
            check_overlap_sets(inherited, class_ids(test_data), test_data.name,
                               "the run this one reuses", args.allow_overlap)
        write_run_config(out, {"method": args.method, "method_config": config_to_dict(method_config),
                               "train_config": asdict(train_config), "data": data})
    try:
        summary = trainer.fit(resume=args.resume)
    except KeyboardInterrupt as stop:
        print(f"kshot: {stop or 'interrupted; continue with --resume'}", file=sys.stderr)
        return 130
    validation = (f"best validation accuracy {summary['best_accuracy'] * 100:.2f}%"
                  if summary["best_accuracy"] >= 0 else "no validation episodes")
    print(f"trained {args.method} for {summary['episodes']} episodes in "
          f"{summary['elapsed_seconds']:.0f} s; {validation}; run in {out}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    from kshot.datasets import DATASETS
    from kshot.methods.base import METHODS
    from kshot.train import TrainConfig

    train = commands.add_parser("train", help="train a method episodically")
    methods = train.add_subparsers(dest="method", required=True, metavar="method",
                                   parser_class=OneLineParser)
    for name, cls in sorted(METHODS.items()):
        sub = methods.add_parser(name, help=(cls.__doc__ or name).strip().split("\n")[0])
        sub.add_argument("--dataset", default="omniglot", choices=DATASETS)
        sub.add_argument("--split", default=None, help="omniglot: vinyals (default), lake, small1, "
                         "small2, random; mnist, digits, folder: heldout (default) or all; iris: all")
        sub.add_argument("--image-size", type=int, default=28)
        sub.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                         help="rotated characters as extra training classes (default: the "
                         "split's convention, on for vinyals); never changes the test set")
        sub.add_argument("--train-on", default="train", choices=["train", "trainval"])
        sub.add_argument("--folder", help="root of --dataset folder")
        sub.add_argument("--out", required=True, help="run directory")
        sub.add_argument("--resume", action="store_true", help="continue the run in --out")
        sub.add_argument("--allow-overlap", action="store_true", help="reuse the weights of a "
                         "run that saw this split's test classes (--embedding-run) anyway")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        add_runtime_options(sub)
        add_config_options(sub, TrainConfig, "t_", shown_defaults=method_train_defaults(cls))
        add_config_options(sub, cls.Config, "m_")
        sub.set_defaults(func=cmd_train)

