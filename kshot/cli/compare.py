"""``kshot compare RUN RUN ...``: score runs on the same episodes and test their differences."""

from __future__ import annotations

import argparse
import sys

from kshot.cli.common import (
    add_episode_options,
    add_runtime_options,
    parse_test_options,
    print_json,
    resolve_device,
    set_threads,
)


def cmd_compare(args: argparse.Namespace) -> int:
    from kshot.compare import compare_runs, format_table

    set_threads(args.threads, args.compile)
    device = resolve_device(args.device)

    def note(text: str) -> None:
        if not args.json:
            print(f"kshot: note: {text}", file=sys.stderr)

    comparison = compare_runs(
        args.run_dirs, ways=args.ways, shots=args.shots, queries=args.queries,
        episodes=args.episodes, seed=args.seed, batch_size=args.batch_size,
        lake_runs=args.lake_runs, dataset=args.dataset, split=args.split, folder=args.folder,
        test_rotations=args.test_rotations, allow_overlap=args.allow_overlap,
        data_dir=args.data_dir, device=device, progress=not args.json, on_note=note,
        test_options=parse_test_options(args.test_options), subset=args.subset)
    if args.json:
        for run in comparison.runs:
            print_json(run.record)
        for record in comparison.pair_records():
            print_json(record)
        print(format_table(comparison), file=sys.stderr)  # the table beside the lines, not in them
    else:
        print(format_table(comparison))
    return 0


def add_parser(commands) -> None:
    cmp = commands.add_parser("compare", help="score runs on the same episodes; paired "
                              "differences with 95%% CIs and p-values")
    cmp.add_argument("run_dirs", nargs="+", metavar="run_dir", help="two or more run directories")
    add_episode_options(cmp, dataset_help="score on another data set (transfer); the runs may "
                        "then come from different data sets", overlap_help="the JSON lines count them")
    cmp.add_argument("--lake-runs", action="store_true", help="Lake's 20 one-shot runs instead "
                     "(the runs' errors are the paired units)")
    cmp.add_argument("--json", action="store_true", help="one JSON line per run (as `kshot eval "
                     "--json`), then one per pair (\"kind\": \"pair\"), on stdout; the table goes to stderr")
    add_runtime_options(cmp)
    cmp.set_defaults(func=cmd_compare)
