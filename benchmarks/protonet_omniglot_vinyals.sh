#!/usr/bin/env bash
# Prototypical Networks on Omniglot, the published Vinyals split (train 1028 characters x 4
# rotations, validation 172 x 4 selecting the checkpoint, test 423 x 4 = 1692 classes), 28x28.
# Two models as in Snell et al. (train shot = test shot): 60-way 1-shot and 60-way 5-shot, 5 queries
# per class, at most 60 minutes of training each. With JOBS=2 (default) both train at once, each on
# one of the THREADS=2 cores. Then 1000 test episodes each of 5-way/20-way 1-shot/5-shot, 15
# queries, on episodes seeded EVAL_SEED (default 123): re-run with another EVAL_SEED to re-score
# the finished runs on other episodes without retraining. MODELS (default "shot1 shot5") picks the
# models (JOBS=1 trains them one after the other); TRAIN_ONLY=1 stops after training.
# usage: bash benchmarks/protonet_omniglot_vinyals.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/protonet_omniglot_vinyals.sh OUT}
source "$(dirname "$0")/common.sh"
common=(--dataset omniglot --split vinyals --image-size 28 --ways 60 --queries 5 --seed 0
        --threads "$per_job" --lr 0.001 --schedule step --decay-every 2000 --lr-decay 0.5
        --val-ways 20 --val-queries 5 --val-episodes 200 --val-every 1000 --time-budget 3600)
models=${MODELS:-"shot1 shot5"}
declare -A args=(
  [shot1]="--shots 1 --val-shots 1 --episodes 20000"
  [shot5]="--shots 5 --val-shots 5 --episodes 12000"
)
model_runs "$out" "protonet ${common[*]}" $models
train_queues "$jobs"
[ -n "${TRAIN_ONLY:-}" ] && exit 0
for model in $models; do run_summary "$out/$model"; done
for ways in 5 20; do
  for model in $models; do
    shots=${model#shot}
    kshot eval "$out/$model" --ways "$ways" --shots "$shots" --queries 15 --episodes 1000 \
      --seed "$seed" --threads "$threads" --json
  done
done
