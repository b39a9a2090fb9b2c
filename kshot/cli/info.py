"""``kshot datasets``, ``kshot plot``, ``kshot demo``: data on disk, training curves, the book's demos."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kshot.cli.common import OneLineParser, print_json
from kshot.errors import KShotError


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
            print_json(row)
        for split, description in SPLIT_DESCRIPTIONS.items():
            print_json({"split": split, "classes": description})
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


def cmd_demo_siamese_mnist(args: argparse.Namespace) -> int:
    from kshot.cli.common import set_threads
    from kshot.demos import SiameseMnistConfig, format_siamese_mnist, siamese_mnist

    set_threads(args.threads)
    config = SiameseMnistConfig(train_images=args.train_images, plot_images=args.plot_images,
                                epochs=args.epochs, seed=args.seed, out_dir=args.out_dir)
    print(format_siamese_mnist(siamese_mnist(config, data_dir=args.data_dir, progress=True)))
    return 0


def add_parser(commands) -> None:
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
    siamese = demos.add_parser("siamese-mnist", help="chapter 2: the book's Siamese network on "
                               "2,000 MNIST digits, contrastive loss, 2-d embedding plot")
    siamese.add_argument("--out-dir", default=".", help="folder of the two PNGs (default: .)")
    siamese.add_argument("--seed", type=int, default=0)
    siamese.add_argument("--epochs", type=int, default=10)
    siamese.add_argument("--train-images", type=int, default=2000)
    siamese.add_argument("--plot-images", type=int, default=1000,
                         help="held-out images to embed and plot (default: 1000)")
    siamese.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    siamese.add_argument("--data-dir", help="folder of the MNIST files (default: $KSHOT_DATA_DIR, "
                         "else a user data dir; downloaded when missing)")
    siamese.set_defaults(func=cmd_demo_siamese_mnist)
