#!/usr/bin/env bash
# Prototypical Networks trained on the 30 background alphabets only (lake split; rotated background
# characters as extra *training* classes), checkpoint selected on 100 unrotated background
# characters it does not train on, scored on Lake's 20 within-alphabet one-shot runs (200 characters
# of 10 evaluation alphabets: 0 seen, and the JSON says so) and on 1000 episodes of the 659
# unrotated evaluation characters; kNN on pixels on the same runs as the baseline.
# EVAL_SEED (default 123) seeds the test episodes: re-score a finished run without retraining.
# usage: bash benchmarks/protonet_omniglot_lake.sh OUT   (THREADS=2; BUDGET=3600 s of training)
set -euo pipefail
out=${1:?usage: bash benchmarks/protonet_omniglot_lake.sh OUT}
source "$(dirname "$0")/common.sh"
train_run "$out/protonet" protonet --dataset omniglot --split lake --rotations --image-size 28 \
  --ways 60 --shots 1 --queries 5 --seed 0 --threads "$threads" --lr 0.001 --schedule step \
  --decay-every 2000 --lr-decay 0.5 --val-ways 20 --val-shots 1 --val-queries 5 \
  --val-episodes 200 --val-every 1000 --episodes 12000 --time-budget "$budget"
train_run "$out/knn-pixels" knn --dataset omniglot --split lake --image-size 28 --k 1 \
  --val-episodes 0 --episodes 0 --threads "$threads"
run_summary "$out/protonet"
kshot eval "$out/protonet" --lake-runs --json --threads "$threads"
kshot eval "$out/knn-pixels" --lake-runs --json --threads "$threads"
kshot eval "$out/protonet" --ways 5 --shots 1 --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
kshot eval "$out/protonet" --ways 20 --shots 1 --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
