"""Time to accuracy of a run: its validation curve as a markdown table.

usage: python benchmarks/val_curve.py RUN_DIR [RUN_DIR ...]
Each row: episodes trained, training seconds, validation accuracy ± 95% CI (the run's fixed
validation episodes), and whether it was the best so far (the checkpoint `kshot eval` scores).
"""

import sys

from kshot.plots import read_metrics


def main() -> None:
    for run_dir in sys.argv[1:]:
        print(f"\n{run_dir}\n\n| episodes | seconds | validation accuracy | best |\n|---|---|---|---|")
        best = -1.0
        for record in read_metrics(run_dir).val:
            is_best = record["accuracy"] > best
            best = max(best, record["accuracy"])
            print(f"| {int(record['episodes'])} | {record['seconds']:.0f} | "
                  f"{record['accuracy'] * 100:.2f} ± {record['ci95'] * 100:.2f} | "
                  f"{'*' if is_best else ''} |")


if __name__ == "__main__":
    main()
