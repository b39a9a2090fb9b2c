#!/usr/bin/env bash
# Prototypical Networks on Omniglot, vinyals split (1200 training characters x 4 rotations), 28x28.
# Two models as in Snell et al. (train shot = test shot): 60-way 1-shot and 60-way 5-shot, 5
# queries per class. Then 1000 test episodes each of 5-way/20-way 1-shot/5-shot.
# usage: bash benchmarks/protonet_omniglot_vinyals.sh OUT     (THREADS=2 by default)
set -euo pipefail
out=${1:?usage: bash benchmarks/protonet_omniglot_vinyals.sh OUT}
threads=${THREADS:-2}
source "$(dirname "$0")/common.sh"
common=(--dataset omniglot --split vinyals --image-size 28 --ways 60 --queries 5 --seed 0
        --threads "$threads" --lr 0.001 --schedule step --decay-every 2000 --lr-decay 0.5
        --val-ways 20 --val-queries 5 --val-episodes 200 --val-every 1000 --time-budget 3600)
train_run "$out/shot1" protonet "${common[@]}" --shots 1 --val-shots 1 --episodes 12000
train_run "$out/shot5" protonet "${common[@]}" --shots 5 --val-shots 5 --episodes 6000
run_summary "$out/shot1"
run_summary "$out/shot5"
for ways in 5 20; do
  kshot eval "$out/shot1" --ways "$ways" --shots 1 --queries 15 --episodes 1000 --seed 123 --threads "$threads" --json
  kshot eval "$out/shot5" --ways "$ways" --shots 5 --queries 15 --episodes 1000 --seed 123 --threads "$threads" --json
done
