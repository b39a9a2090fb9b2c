"""The ``kshot`` command: train, eval, predict, datasets, plot, demo.

User errors end with one line on stderr (``kshot: error: ...``) and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from kshot.errors import KShotError


# -------------------------------------------------------------------------------- helpers
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
                       skip: Sequence[str] = ()) -> None:
    """One ``--option`` per dataclass field, typed from its default; dest = ``prefix + name``."""
    docs = field_docs(config_type)
    for f in fields(config_type):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {default})"
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


def _print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -------------------------------------------------------------------------------- train
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
        method_config = config_from_dict(method_cls.Config, collect_config(args, "m_"))
        train_config = config_from_dict(TrainConfig, collect_config(args, "t_"))
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
    trainer.learning_rate(0)  # validates the schedule name
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


# -------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from kshot.checkpoint import load_run
    from kshot.data.episodes import EpisodeSampler
    from kshot.data.omniglot import load_lake_runs
    from kshot.datasets import DEFAULT_SPLITS, load_dataset
    from kshot.evaluate import evaluate, evaluate_lake_runs
    from kshot.protocol import check_overlap, class_ids, lake_run_class_ids

    set_threads(args.threads, args.compile)
    device = resolve_device(args.device)
    learner, run_config, checkpoint = load_run(args.run_dir)
    learner.to(device)
    data = run_config["data"]
    scored_checkpoint = {"run": str(args.run_dir), "checkpoint": checkpoint["checkpoint"],
                         "checkpoint_episodes": checkpoint.get("episodes")}
    if checkpoint.get("note") and not args.json:
        print(f"kshot: note: {checkpoint['note']}", file=sys.stderr)
    if args.lake_runs:
        runs = load_lake_runs(learner.item_shape[-1], args.data_dir)
        overlap = check_overlap(args.run_dir, lake_run_class_ids(args.data_dir),
                                "Lake's 20 runs", args.allow_overlap)
        result = evaluate_lake_runs(learner, runs, device=device)
        record = {"method": run_config["method"], "dataset": "omniglot", "split": "lake-runs",
                  "ways": 20, "shots": 1, "episodes": 20, "error": round(result["error"], 3),
                  "per_run": [round(e, 2) for e in result["per_run"]], "overlap": overlap,
                  **scored_checkpoint, "seconds": round(result["seconds"], 3)}
        if args.json:
            _print_json(record)
        else:
            print(f"Lake's 20 runs: error {result['error']:.2f}% "
                  f"(per run: {', '.join(f'{e:.0f}' for e in result['per_run'])})")
        return 0
    dataset = args.dataset or data["dataset"]
    split = args.split or (data["split"] if dataset == data["dataset"] else None) or \
        DEFAULT_SPLITS.get(dataset)
    test_data = load_dataset(dataset, split=split, subset="test", image_size=learner.item_shape[-1],
                             test_rotations=args.test_rotations, data_dir=args.data_dir,
                             folder=args.folder, progress=not args.json)
    overlap = check_overlap(args.run_dir, class_ids(test_data), test_data.name, args.allow_overlap)
    sampler = EpisodeSampler(test_data, args.ways, args.shots, args.queries, seed=args.seed)
    report = evaluate(learner, sampler, args.episodes, batch_size=args.batch_size, device=device,
                      progress=not args.json)
    record = {"method": run_config["method"], "dataset": dataset, "split": split,
              "test_set": test_data.name, "test_classes": test_data.n_classes,
              "test_rotations": bool(test_data.meta.get("rotations", False)),
              "ways": args.ways, "shots": args.shots, "queries": args.queries,
              "episodes": args.episodes, "seed": args.seed,
              "accuracy": round(report.accuracy * 100, 3), "ci95": round(report.ci95 * 100, 3),
              "overlap": overlap, **scored_checkpoint, "seconds": round(report.seconds, 3),
              "episodes_per_s": round(report.episodes_per_second, 2)}
    if args.json:
        _print_json(record)
    else:
        rotated = ", with rotations" if record["test_rotations"] else ""
        print(f"{run_config['method']} ({checkpoint['checkpoint']} checkpoint) on "
              f"{test_data.name} ({test_data.n_classes} classes{rotated}): {args.ways}-way "
              f"{args.shots}-shot, {args.episodes} episodes: {report.accuracy * 100:.2f} ± "
              f"{report.ci95 * 100:.2f}% ({report.episodes_per_second:.0f} episodes/s)"
              + (f"; {overlap} of the classes were seen in training" if overlap else ""))
    return 0


# -------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from kshot.classifier import FewShotClassifier
    from kshot.data.folder import load_folder, load_images

    set_threads(args.threads, args.compile)
    classifier = FewShotClassifier.from_run(args.run_dir, resolve_device(args.device),
                                            allow_overlap=args.allow_overlap)
    size = classifier.learner.item_shape[-1]
    support = load_folder(args.support, size, invert=args.invert)
    queries = load_images(args.images, size, invert=args.invert)
    classifier.fit(support.images, [support.class_names[i] for i in support.labels.tolist()])
    probabilities = classifier.predict_proba(queries)
    for path, row in zip(args.images, probabilities):
        best = int(row.argmax())
        label, probability = str(classifier.classes_[best]), float(row[best])
        if args.json:
            _print_json({"image": str(path), "label": label, "probability": round(probability, 4)})
        else:
            print(f"{path}\t{label}\t{probability:.3f}")
    return 0


# -------------------------------------------------------------------------------- datasets
def _check_file(path: Path, name: str) -> bool | str:
    """True when a present data file passes its structural check, else the problem."""
    from kshot.data.omniglot import check_archive

    if not name.startswith("mnist"):
        return check_archive(path, name)
    from kshot.data.mnist import read_idx

    try:
        read_idx(path)
    except KShotError as error:
        return str(error)
    return True


def cmd_datasets(args: argparse.Namespace) -> int:
    from kshot.data.omniglot import ARCHIVES, LAKE_RUNS
    from kshot.data.store import cache_dir, data_dir

    root, cache = data_dir(args.data_dir), cache_dir()
    rows = []
    resources = [(name, spec[0]) for name, spec in ARCHIVES.items()] + [("all_runs", LAKE_RUNS)]
    try:
        from kshot.data.mnist import MNIST_RESOURCES

        resources += [(f"mnist {subset} {kind}", resource)
                      for subset, pair in MNIST_RESOURCES.items() for kind, resource in pair.items()]
    except ImportError:
        pass
    for name, resource in resources:
        path = root / resource.filename
        present = path.is_file()
        verified = _check_file(path, name) if present else None
        stem = Path(resource.filename).name.split(".")[0]
        cached = sorted(p.name for p in cache.glob(f"*-{stem}-*px-*.npz")) if cache.is_dir() else []
        rows.append({"name": name, "file": str(path), "present": present, "verified": verified,
                     "cached": cached})
    from kshot.datasets import SPLIT_DESCRIPTIONS

    if args.json:
        for row in rows:
            _print_json(row)
        for split, description in SPLIT_DESCRIPTIONS.items():
            _print_json({"split": split, "classes": description})
        return 0
    print(f"data dir: {root}\ncache dir: {cache}")
    for row in rows:
        state = "missing (downloaded on first use)" if not row["present"] else (
            "present, structure ok" if row["verified"] is True else f"present, {row['verified']}")
        cached = f"; cached: {', '.join(row['cached'])}" if row["cached"] else ""
        print(f"  {row['name']:<28} {state}{cached}")
    print("splits (a run is scored only on classes it did not train or validate on):")
    for split, description in SPLIT_DESCRIPTIONS.items():
        print(f"  {split}: {description}")
    return 0


# -------------------------------------------------------------------------------- plot / demo
def cmd_plot(args: argparse.Namespace) -> int:
    from kshot.plots import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kshot.demos import KnnVsMlpConfig, format_knn_vs_mlp, knn_vs_mlp, plot_iris_3d

    config = KnnVsMlpConfig(draws=args.draws, seed=args.seed)
    started = time.perf_counter()
    result = knn_vs_mlp(config)
    print(format_knn_vs_mlp(result))
    plot = plot_iris_3d(args.plot, seed=args.seed)
    print(f"\n{config.draws} draws in {time.perf_counter() - started:.1f} s; 3-D plot: {plot}")
    return 0


# -------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from kshot import __version__
    from kshot.datasets import DATASETS
    from kshot.methods.base import METHODS, get_method
    from kshot.train import TrainConfig

    get_method("protonet")  # registers every method
    parser = OneLineParser(prog="kshot", description="One-shot and few-shot learning.")
    parser.add_argument("--version", action="version", version=f"kshot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def runtime(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--data-dir", help="folder of the official archives (default: "
                         "$KSHOT_DATA_DIR, else a user cache dir)")
        sub.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
        sub.add_argument("--device", default="cpu", help="cpu or cuda")
        sub.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                         help="compiled / fused backbones (default: on, unless KSHOT_COMPILE=0); "
                         "results are unchanged within float tolerance")

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
        runtime(sub)
        add_config_options(sub, TrainConfig, "t_")
        add_config_options(sub, cls.Config, "m_")
        sub.set_defaults(func=cmd_train)

    ev = commands.add_parser("eval", help="score a run on test episodes of classes it never saw")
    ev.add_argument("run_dir")
    ev.add_argument("--ways", type=int, default=5)
    ev.add_argument("--shots", type=int, default=1)
    ev.add_argument("--queries", type=int, default=15)
    ev.add_argument("--episodes", type=int, default=1000)
    ev.add_argument("--seed", type=int, default=123)
    ev.add_argument("--batch-size", type=int, default=16, help="episodes per forward pass")
    ev.add_argument("--lake-runs", action="store_true", help="Lake's 20 one-shot runs instead")
    ev.add_argument("--dataset", choices=DATASETS, help="score on another data set (transfer)")
    ev.add_argument("--split", help="split of --dataset")
    ev.add_argument("--folder", help="root of --dataset folder")
    ev.add_argument("--test-rotations", action=argparse.BooleanOptionalAction, default=None,
                    help="Omniglot test characters rotated by 90/180/270 as extra classes "
                    "(default: the split's convention: on for vinyals, off for lake)")
    ev.add_argument("--allow-overlap", action="store_true", help="score classes the run trained "
                    "or validated on anyway (refused by default; the JSON line counts them)")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    runtime(ev)
    ev.set_defaults(func=cmd_eval)

    pr = commands.add_parser("predict", help="classify images given a folder of labelled examples")
    pr.add_argument("run_dir")
    pr.add_argument("--support", required=True, help="folder of class sub-folders")
    pr.add_argument("images", nargs="+", help="query images")
    pr.add_argument("--invert", default="auto", choices=["auto", "yes", "no"],
                    help="invert dark-on-light images (auto: per image)")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--allow-overlap", action="store_true", help="support classes named like "
                    "classes the run trained on (folder:<name>) are refused unless this is given")
    runtime(pr)
    pr.set_defaults(func=cmd_predict)

    ds = commands.add_parser("datasets", help="what is present, verified and cached")
    ds.add_argument("--data-dir")
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(func=cmd_datasets)

    pl = commands.add_parser("plot", help="training curves of a run to PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", help="PNG path (default: <run-dir>/curves.png)")
    pl.set_defaults(func=cmd_plot)

    demo = commands.add_parser("demo", help="the book's demos")
    demos = demo.add_subparsers(dest="demo", required=True, parser_class=OneLineParser)
    knn = demos.add_parser("knn-vs-mlp", help="chapter 1: kNN vs a small MLP on 30 iris points")
    knn.add_argument("--draws", type=int, default=200)
    knn.add_argument("--seed", type=int, default=0)
    knn.add_argument("--plot", default="iris_3d.png", help="where to save the 3-D scatter plot")
    knn.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "invert", None) in ("yes", "no"):
        args.invert = args.invert == "yes"
    try:
        return args.func(args)
    except KShotError as error:
        message = " ".join(str(error).split())
        print(f"kshot: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kshot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
