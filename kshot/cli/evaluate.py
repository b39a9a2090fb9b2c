"""``kshot eval RUN``: score a run on test episodes of classes it never saw, or Lake's 20 runs."""

from __future__ import annotations

import argparse
import sys

from kshot.cli.common import (
    add_episode_options,
    add_runtime_options,
    load_test_set,
    parse_test_options,
    print_json,
    resolve_device,
    set_threads,
)


def cmd_eval(args: argparse.Namespace) -> int:
    from kshot.checkpoint import load_run
    from kshot.data.episodes import EpisodeSampler
    from kshot.data.omniglot import load_lake_runs
    from kshot.evaluate import (
        check_scored_subset,
        eval_record,
        evaluate,
        evaluate_lake_runs,
        lake_record,
    )
    from kshot.protocol import check_overlap, lake_run_class_ids

    set_threads(args.threads, args.compile)
    device = resolve_device(args.device)
    test_options = parse_test_options(args.test_options)
    learner, run_config, checkpoint = load_run(args.run_dir, test_options=test_options)
    learner.to(device)
    if checkpoint.get("note") and not args.json:
        print(f"kshot: note: {checkpoint['note']}", file=sys.stderr)
    if args.lake_runs:
        check_scored_subset(args.subset, lake_runs=True)
        runs = load_lake_runs(learner.item_shape[-1], args.data_dir)
        overlap = check_overlap(args.run_dir, lake_run_class_ids(args.data_dir),
                                "Lake's 20 runs", args.allow_overlap)
        result = evaluate_lake_runs(learner, runs, device=device)
        record = lake_record(args.run_dir, run_config, checkpoint, result, overlap)
        if args.json:
            print_json(record)
        else:
            print(f"Lake's 20 runs: error {result['error']:.2f}% "
                  f"(per run: {', '.join(f'{e:.0f}' for e in result['per_run'])})")
        return 0
    dataset, split, test_data, overlap = load_test_set(args, run_config, learner.item_shape[-1])
    sampler = EpisodeSampler(test_data, args.ways, args.shots, args.queries, seed=args.seed)
    report = evaluate(learner, sampler, args.episodes, batch_size=args.batch_size, device=device,
                      progress=not args.json)
    record = eval_record(args.run_dir, run_config, checkpoint, report, test_data, dataset, split,
                         overlap, test_options)
    if args.json:
        print_json(record)
    else:
        rotated = ", with rotations" if record["test_rotations"] else ""
        print(f"{run_config['method']} ({checkpoint['checkpoint']} checkpoint) on "
              f"{test_data.name} ({test_data.n_classes} classes{rotated}): {args.ways}-way "
              f"{args.shots}-shot, {args.episodes} episodes: {report.accuracy * 100:.2f} ± "
              f"{report.ci95 * 100:.2f}% ({report.episodes_per_second:.0f} episodes/s)"
              + (f"; {overlap} of the classes were seen in training" if overlap else ""))
    return 0


def add_parser(commands) -> None:
    ev = commands.add_parser("eval", help="score a run on test episodes of classes it never saw")
    ev.add_argument("run_dir")
    add_episode_options(ev)
    ev.add_argument("--lake-runs", action="store_true", help="Lake's 20 one-shot runs instead")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    add_runtime_options(ev)
    ev.set_defaults(func=cmd_eval)

