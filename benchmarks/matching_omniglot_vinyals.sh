#!/usr/bin/env bash
# Matching Networks on Omniglot, the published Vinyals split (train 1028 characters x 4 rotations,
# validation 172 x 4 selecting the checkpoint, test 423 x 4 = 1692 classes), 28x28, Conv4.
# Two models, with and without full-context embeddings (bi-LSTM over the support set, attention-LSTM
# with 5 processing steps for the queries), each trained 20-way 1-shot with 5 queries per class
# (episodes shuffled: items in a seeded random order), at most BUDGET seconds (default 3600) of
# training each. With JOBS=2 (default) both train at once, each on one of the THREADS=2 cores. Then
# one `kshot compare --json` of both models (and of ProtoNet's model of the same shot from PROTONET,
# if given: the protonet_omniglot_vinyals.sh output folder) on the same 1000 test episodes of each of
# 5-way/20-way 1-shot/5-shot, 15 queries, seeded EVAL_SEED (default 123): one `kshot eval --json`
# line per run and one line per pair on stdout, the table on stderr. Re-run with another EVAL_SEED
# to re-score the finished runs on other episodes without retraining.
# usage: [PROTONET=DIR] bash benchmarks/matching_omniglot_vinyals.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/matching_omniglot_vinyals.sh OUT}
source "$(dirname "$0")/common.sh"
common=(--dataset omniglot --split vinyals --image-size 28 --ways 20 --shots 1 --queries 5 --seed 0
        --threads "$per_job" --lr 0.001 --schedule step --decay-every 4000 --lr-decay 0.5
        --val-ways 20 --val-shots 1 --val-queries 5 --val-episodes 200 --val-every 1000
        --episodes 40000 --time-budget "$budget")
if [ "$jobs" -ge 2 ]; then
  train_run "$out/fce" matching "${common[@]}" --fce &
  train_run "$out/nofce" matching "${common[@]}" --no-fce &
  wait_all
else
  train_run "$out/fce" matching "${common[@]}" --fce
  train_run "$out/nofce" matching "${common[@]}" --no-fce
fi
run_summary "$out/fce"
run_summary "$out/nofce"
for ways in 5 20; do
  for shots in 1 5; do
    runs=("$out/fce" "$out/nofce")
    # ProtoNet's model of the same shot (Snell et al.: train shot = test shot), when given
    if [ -n "${PROTONET:-}" ]; then runs+=("$PROTONET/shot$shots"); fi
    # one `kshot eval --json` line per run, one line per pair; the table on stderr
    kshot compare "${runs[@]}" --ways "$ways" --shots "$shots" --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
  done
done
