"""``kshot santoro RUN``: Santoro et al.'s accuracy by instance of a MANN run.

Episodes of the run's training way (its ``--ways`` classes) × 10 images of held-out classes (the
test set of the run's split, as ``kshot eval`` chooses it, guarded against classes the run saw),
each read as one sequence in a seeded random order, the correct label of every step given at the
next; the accuracy at the 1st, 2nd, 3rd, 4th, 5th and 10th presentation of a class, in percent.
"""

from __future__ import annotations

import argparse

from kshot.cli.common import (
    add_episode_options,
    add_runtime_options,
    load_test_set,
    print_json,
    resolve_device,
    set_threads,
)
from kshot.errors import KShotError

PRESENTATIONS = 10
"""Images of each class in an episode (Santoro et al.: 10)."""


def cmd_santoro(args: argparse.Namespace) -> int:
    from kshot.checkpoint import load_run, read_run_config
    from kshot.data.episodes import EpisodeSampler
    from kshot.evaluate import checkpoint_fields, test_set_fields
    from kshot.methods.mann import evaluate_instances

    set_threads(args.threads, args.compile)
    device = resolve_device(args.device)
    method = read_run_config(args.run_dir).get("method")
    if method != "mann":
        raise KShotError(f"{args.run_dir} holds a {method!r} run: kshot santoro scores mann runs "
                         "(kshot train mann); score this one with kshot eval")
    learner, run_config, checkpoint = load_run(args.run_dir)
    learner.to(device)
    ways = args.ways or run_config["train_config"]["ways"]
    dataset, split, test_data, overlap = load_test_set(args, run_config, learner.item_shape[-1])
    sampler = EpisodeSampler(test_data, ways, PRESENTATIONS, 0, seed=args.seed, shuffle=True)
    report = evaluate_instances(learner, sampler, args.episodes, batch_size=args.batch_size,
                                device=device)
    config = run_config["method_config"]
    record = {"run": str(args.run_dir), "method": "mann", "classes": ways,
              "labels": config["labels"], "episodes": report.episodes, "seed": report.seed,
              "instance_accuracy": {str(k): round(v * 100, 2) for k, v in report.accuracy.items()},
              "instance_ci95": {str(k): round(v * 100, 2) for k, v in report.ci95.items()},
              "overlap": overlap, **test_set_fields(test_data, dataset, split),
              **{k: v for k, v in checkpoint_fields(args.run_dir, checkpoint).items() if k != "run"},
              "seconds": round(report.seconds, 3)}
    if args.json:
        print_json(record)
    else:
        shown = ", ".join(f"{k}: {v * 100:.1f}%" for k, v in report.accuracy.items())
        print(f"mann ({checkpoint['checkpoint']} checkpoint, {config['labels']} labels) on "
              f"{test_data.name}: {ways} classes × {PRESENTATIONS} images, {report.episodes} "
              f"episodes; accuracy by instance {shown}"
              + (f"; {overlap} of the classes were seen in training" if overlap else ""))
    return 0


def add_parser(commands) -> None:
    sub = commands.add_parser("santoro", help="accuracy by instance of a mann run (Santoro et al.)")
    sub.add_argument("run_dir")
    add_episode_options(sub, ways=None, shots=False)
    sub.add_argument("--json", action="store_true", help="print one JSON line")
    add_runtime_options(sub)
    sub.set_defaults(func=cmd_santoro)
