"""``kshot sinusoid maml|daml``: the chapter-4 sinusoid experiments, trained, scored and drawn.

``maml`` trains MAML and the pre-trained baseline (the same MLP trained on all tasks jointly) on one
family and shot; ``daml`` trains domain-adaptive meta-learning (adapting from observations of the
task in another domain, no labels) and MAML given the labels. Each model is scored on the same
fresh tasks (a seed the training never uses) after 0 (the initialisation) and after 1, 5, 10
gradient steps, mean squared error ± 95% CI, and the book's picture is saved. Finished runs are
reused, interrupted ones resumed: run again with another --seed to re-score on other tasks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kshot.cli.common import add_runtime_options, print_json, set_threads
from kshot.errors import KShotError

MODELS = {  # experiment -> [(name, method, observation)]
    "maml": [("maml", "maml", "labels"), ("pretrained", "pretrained", "labels")],
    "daml": [("daml", "daml", "shifted"), ("maml", "maml", "labels")],
}


def cmd_sinusoid(args: argparse.Namespace) -> int:
    import torch

    from kshot.data.episodes import episode_seed
    from kshot.plots import plot_sinusoid
    from kshot.tasks.experiment import predictions_after_steps, score_after_steps, train_task_run
    from kshot.tasks.sinusoid import SinusoidTasks
    from kshot.train import TrainConfig

    set_threads(args.threads, False)
    if min(args.steps) < 0:
        raise KShotError(f"--steps must be >= 0, got {min(args.steps)}")
    out = Path(args.out)
    models = MODELS[args.experiment]
    if args.no_baseline:
        models = models[:1]
    if args.experiment == "daml" and args.observation != "shifted":
        models = [(f"daml-{args.observation}", "daml", args.observation)] + models[1:]
    train_config = TrainConfig(
        episodes=args.iterations * args.meta_batch, ways=1, shots=args.shots, queries=args.queries,
        meta_batch=args.meta_batch, lr=args.lr, schedule="constant",
        val_every=max(args.val_every, 1) * args.meta_batch, val_episodes=args.val_tasks,
        val_ways=1, val_shots=args.shots, val_queries=args.queries, time_budget=args.time_budget,
        log_every=100 * args.meta_batch, seed=args.train_seed)
    method_config = {"inner_steps": args.inner_steps, "inner_lr": args.inner_lr,
                     "meta_sgd": args.meta_sgd}
    steps = sorted(set(args.steps))
    scores = {}
    for name, method, observation in models:
        family = SinusoidTasks(args.family, observation)
        run_dir = out / name
        summary = train_task_run(run_dir, method, family, train_config, method_config,
                                 progress=not args.quiet)
        if not args.quiet:
            print(f"{name}: {summary['episodes']} tasks in {summary['elapsed_seconds']:.0f} s "
                  f"({run_dir})", file=sys.stderr)
        scores[name] = score_after_steps(run_dir, family, args.shots, args.test_points,
                                         args.tasks, args.seed, steps)
        for score in scores[name]:
            record = {"run": str(run_dir), "method": method, "task": "sinusoid",
                      "family": args.family, "observation": observation, "k_shot": args.shots,
                      "steps": score.steps, "mse": round(score.report.mean, 4),
                      "ci95": round(score.report.ci95, 4), "tasks": args.tasks, "seed": args.seed,
                      "train_tasks": summary["episodes"],
                      "train_seconds": summary["elapsed_seconds"]}
            if args.json:
                print_json(record)
            else:
                print(f"{name:>10}  K={args.shots}  {score.steps:>2} steps: MSE "
                      f"{score.report.mean:.3f} ± {score.report.ci95:.3f}")
    # the book's picture: the first test task, the models before and after 1 and 10 steps
    shown = [s for s in (0, 1, 10) if s in steps] or steps
    generator = torch.Generator().manual_seed(episode_seed(args.seed, 0))
    grid = torch.linspace(-5, 5, 200)[:, None]
    truth = SinusoidTasks(args.family).curve(generator, grid[:, 0])
    panels, support_x, support_y, observed = {}, None, None, None
    for name, _, observation in models:
        task = SinusoidTasks(args.family, observation).sampler(args.shots, 1, args.seed).task(0)
        labelled = SinusoidTasks(args.family).sampler(args.shots, 1, args.seed).task(0)
        support_x, support_y = labelled.support_x, labelled.support_y
        if observation != "labels":
            observed = task.support_y
        panels[name] = {s: p.numpy() for s, p in predictions_after_steps(
            out / name, (task.support_x, task.support_y), grid, shown).items()}
    path = plot_sinusoid(args.plot or out / f"sinusoid-{models[0][0]}.png", grid[:, 0].numpy(), truth.numpy(),
                         support_x[:, 0].numpy(), support_y.numpy(), panels,
                         title=f"sinusoid ({args.family}), K = {args.shots}",
                         observed=None if observed is None else observed.numpy())
    if not args.quiet:
        print(f"picture: {path}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    from kshot.cli.common import OneLineParser

    sinusoid = commands.add_parser("sinusoid", help="chapter 4: MAML / DAML on sinusoid regression")
    experiments = sinusoid.add_subparsers(dest="experiment", required=True,
                                          parser_class=OneLineParser)
    for experiment, text in (("maml", "MAML against the pre-trained baseline"),
                             ("daml", "domain-adaptive meta-learning against MAML with labels")):
        sub = experiments.add_parser(experiment, help=text)
        sub.add_argument("--out", required=True, help="folder of the runs (one per model)")
        sub.add_argument("--family", default="finn", choices=["finn", "book"],
                         help="finn: amplitude U[0.1, 5], phase U[0, pi]; book: phase 0 or pi")
        sub.add_argument("--shots", type=int, default=10, help="K: support points per task")
        sub.add_argument("--queries", type=int, default=10, help="query points per training task")
        sub.add_argument("--meta-batch", type=int, default=25, help="tasks per step (Finn: 25)")
        sub.add_argument("--iterations", type=int, default=70000, help="training steps (Finn: 70000)")
        sub.add_argument("--time-budget", type=float, default=0.0, help="seconds of training per "
                         "model (0: no limit)")
        sub.add_argument("--lr", type=float, default=1e-3, help="Adam rate of the outer loop")
        sub.add_argument("--inner-steps", type=int, default=1, help="inner steps in training")
        sub.add_argument("--inner-lr", type=float, default=0.01, help="inner rate α (Finn: 0.01)")
        sub.add_argument("--meta-sgd", action="store_true", help="learned per-parameter rates")
        sub.add_argument("--val-every", type=int, default=5000, help="steps between validations")
        sub.add_argument("--val-tasks", type=int, default=200, help="validation tasks")
        sub.add_argument("--train-seed", type=int, default=0)
        if experiment == "daml":
            sub.add_argument("--observation", default="shifted", choices=["shifted", "none"],
                             help="what DAML is given of its support points: the values in "
                             "another domain, or nothing but where they are")
        sub.add_argument("--no-baseline", action="store_true", help="train and score only the "
                         "first model")
        sub.add_argument("--tasks", type=int, default=1000, help="fresh test tasks")
        sub.add_argument("--test-points", type=int, default=100, help="query points per test task")
        sub.add_argument("--steps", type=int, nargs="+", default=[0, 1, 5, 10],
                         help="adaptation steps scored (0: before any)")
        sub.add_argument("--seed", type=int, default=123, help="seed of the test tasks")
        sub.add_argument("--plot", help="the picture's path (default: OUT/sinusoid-MODEL.png, "
                         "MODEL the first model)")
        sub.add_argument("--json", action="store_true", help="one JSON line per (model, steps)")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        add_runtime_options(sub)
        sub.set_defaults(func=cmd_sinusoid)
        if experiment == "maml":
            sub.set_defaults(observation=None)
