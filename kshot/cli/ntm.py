"""``kshot ntm copy``: the chapter-3 copy task, trained, scored and drawn.

Trains a Neural Turing Machine and the LSTM baseline of about the same parameter count on the same
sequences (random 8-bit vectors, lengths 1–20: the paper's training range) with gradient clipping,
by the one Trainer (checkpoints, resume, a time budget, validation on fixed sequences keeping the
best model), then scores each model on fresh sequences (a seed the training never uses) of its
training range and of longer lengths (30, 40, 60: the paper's generalisation test), in bits per
sequence ± 95% CI, and saves the book's picture: target against output, and the NTM's write and
read weightings over time. Finished runs are reused, interrupted ones resumed: run again with
another --seed to re-score on other sequences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kshot.cli.common import (
    add_config_options,
    add_runtime_options,
    collect_config,
    print_json,
    set_threads,
)

MODELS = ("ntm", "lstm")


def cmd_ntm_copy(args: argparse.Namespace) -> int:
    from kshot.errors import KShotError
    from kshot.methods.ntm import LSTMBaselineConfig, NTMConfig
    from kshot.plots import plot_copy
    from kshot.tasks.copy import CopyTask
    from kshot.tasks.experiment import copy_trace, score_copy_run, train_task_run
    from kshot.train import TrainConfig

    set_threads(args.threads, False)
    if any(length < 1 for length in args.lengths):
        raise KShotError(f"--lengths must be >= 1, got {min(args.lengths)}")
    task = CopyTask(args.width, args.min_length, args.max_length)
    train_config = TrainConfig(
        episodes=args.sequences, ways=1, shots=1, queries=1, meta_batch=args.batch_size,
        lr=args.lr, schedule="constant", grad_clip=args.grad_clip, val_every=args.val_every,
        val_episodes=args.val_sequences, val_ways=1, val_shots=1, val_queries=1,
        time_budget=args.time_budget, log_every=max(args.batch_size * 50, 1),
        seed=args.train_seed)
    configs = {"ntm": NTMConfig, "lstm": LSTMBaselineConfig}
    out = Path(args.out)
    lengths = [None] + sorted(set(args.lengths))
    panels = {}
    for model in dict.fromkeys(args.models):
        method_config = collect_config(args, f"{model}_")
        configs[model](**method_config)  # checks the options before any training
        run_dir = out / model
        summary = train_task_run(run_dir, model, task, train_config, method_config,
                                 progress=not args.quiet)
        seconds = summary["elapsed_seconds"]
        speed = summary["episodes"] / seconds if seconds > 0 else 0.0
        if not args.quiet:
            print(f"{model}: {summary['episodes']} sequences in {seconds:.0f} s ({speed:.1f}/s, "
                  f"{run_dir})", file=sys.stderr)
        if args.train_only:
            continue
        for score in score_copy_run(run_dir, lengths, args.eval_sequences, args.seed):
            length = score.length or f"{args.min_length}-{args.max_length}"
            record = {"run": str(run_dir), "method": model, "task": "copy", "length": length,
                      "bits_per_sequence": round(score.report.mean, 4),
                      "ci95": round(score.report.ci95, 4), "sequences": args.eval_sequences,
                      "seed": args.seed, "train_sequences": summary["episodes"],
                      "train_seconds": seconds, "train_sequences_per_s": round(speed, 2)}
            if args.json:
                print_json(record)
            else:
                print(f"{model:>5}  length {length!s:>6}: {score.report.mean:.3f} ± "
                      f"{score.report.ci95:.3f} bits per sequence")
        panels[model] = {key: value.numpy() for key, value in
                         copy_trace(run_dir, args.plot_length or args.max_length, args.seed).items()}
    if args.train_only:
        return 0
    path = plot_copy(args.plot or out / "copy.png", panels,
                     title=f"copy task, length {args.plot_length or args.max_length}")
    if not args.quiet:
        print(f"picture: {path}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    from kshot.cli.common import OneLineParser
    from kshot.methods.ntm import LSTMBaselineConfig, NTMConfig

    ntm = commands.add_parser("ntm", help="chapter 3: the Neural Turing Machine's copy task")
    tasks = ntm.add_subparsers(dest="task", required=True, parser_class=OneLineParser)
    sub = tasks.add_parser("copy", help="train the NTM and an LSTM baseline to copy sequences")
    sub.add_argument("--out", required=True, help="folder of the runs (OUT/ntm, OUT/lstm)")
    sub.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                     help="models to train and score (default: both)")
    sub.add_argument("--width", type=int, default=8, help="bits per vector (the paper: 8)")
    sub.add_argument("--min-length", type=int, default=1, help="shortest training sequence")
    sub.add_argument("--max-length", type=int, default=20, help="longest training sequence "
                     "(the paper: 20)")
    sub.add_argument("--sequences", type=int, default=500_000, help="training sequences in all")
    sub.add_argument("--batch-size", type=int, default=32, help="sequences per step (one length "
                     "per batch)")
    sub.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    sub.add_argument("--grad-clip", type=float, default=10.0, help="largest gradient norm of a "
                     "step (0: no clipping)")
    sub.add_argument("--time-budget", type=float, default=0.0, help="seconds of training per "
                     "model (0: no limit)")
    sub.add_argument("--val-every", type=int, default=16_000, help="sequences between "
                     "validations (the best model is kept)")
    sub.add_argument("--val-sequences", type=int, default=200, help="fixed validation sequences")
    sub.add_argument("--train-seed", type=int, default=0)
    add_config_options(sub, NTMConfig, "ntm_", skip=("outputs",))  # the copy task's: the bits
    add_config_options(sub, LSTMBaselineConfig, "lstm_", skip=("outputs",))
    sub.add_argument("--lengths", type=int, nargs="+", default=[30, 40, 60],
                     help="lengths scored beyond the training range (which is always scored)")
    sub.add_argument("--eval-sequences", type=int, default=1000, help="fresh test sequences per "
                     "length")
    sub.add_argument("--seed", type=int, default=123, help="seed of the test sequences")
    sub.add_argument("--plot", help="the picture's path (default: OUT/copy.png)")
    sub.add_argument("--plot-length", type=int, default=0, help="length of the pictured sequence "
                     "(default: --max-length)")
    sub.add_argument("--train-only", action="store_true", help="train (or resume) the runs, "
                     "score nothing")
    sub.add_argument("--json", action="store_true", help="one JSON line per (model, length)")
    sub.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_options(sub)
    sub.set_defaults(func=cmd_ntm_copy)
