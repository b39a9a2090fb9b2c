#!/usr/bin/env bash
# Meta Networks (Munkhdalai & Yu 2017) on Omniglot, the published Vinyals split (train 1028
# characters x 4 rotations, validation 172 x 4 selecting the checkpoint, test 423 x 4 = 1692
# classes), 28x28. The paper's model (u and b: four conv blocks of 64 filters with layer-augmented
# fast weights, m an MLP and d an LSTM of 20 units, coordinate-wise) and the authors' optimiser
# (one episode per step, Adam 1e-3 constant, gradients clipped at norm 10). One model per setting
# of the paper's Omniglot table, trained on episodes of that setting: 5-way 1-shot (10 queries per
# class) and 20-way 1-shot (5 queries per class), at most BUDGET seconds (default 7200) of training
# each, JOBS (default 2) side by side on THREADS (default 2) cores. MODELS (default "5w1s 20w1s")
# picks the models; finished runs are not retrained, killed ones resume.
# Each model is then scored once on 1000 test episodes of its own setting (15 queries per class,
# seeded EVAL_SEED, default 123) by one `kshot compare --json`, beside kNN on pixels (1 neighbour;
# `$OUT/knn-pixels`, nothing to train) and the partner runs given: MAML=DIR (the output folder of
# maml_omniglot_vinyals.sh: its model of the same setting), PROTONET=DIR (that of
# protonet_omniglot_vinyals.sh: its 1-shot model), MANN=DIR (that of mann_omniglot.sh: the one-hot
# model for 5-way episodes, the string-label one for more ways), all on the same episodes. Its
# per-run lines are the `kshot eval --json` ones, then one per pair; the table on stderr. Meta
# Networks' scoring is slow, so it is done once.
# Re-run with another EVAL_SEED to re-score the finished runs without retraining.
# usage: [MAML=DIR] [PROTONET=DIR] [MANN=DIR] bash benchmarks/metanet_omniglot_vinyals.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/metanet_omniglot_vinyals.sh OUT}
source "$(dirname "$0")/common.sh"
budget=${BUDGET:-7200}
models=${MODELS:-"5w1s 20w1s"}
common=(--dataset omniglot --split vinyals --image-size 28 --seed 0 --threads "$per_job"
        --episodes 1000000 --val-every 2000 --val-episodes 200 --time-budget "$budget")
declare -A args=(
  [5w1s]="--ways 5 --shots 1 --queries 10"
  [20w1s]="--ways 20 --shots 1 --queries 5"
)
model_runs "$out" "metanet ${common[*]}" $models
train_queues "$jobs"
[ -n "${TRAIN_ONLY:-}" ] && exit 0
train_run "$out/knn-pixels" knn --dataset omniglot --split vinyals --image-size 28 --k 1 \
  --val-episodes 0 --episodes 0 --threads "$threads"
for model in $models; do
  run_summary "$out/$model"
  ways=${model%%w*}
  runs=("$out/$model")
  if [ -n "${MAML:-}" ]; then runs+=("$MAML/$model"); fi
  if [ -n "${PROTONET:-}" ]; then runs+=("$PROTONET/shot1"); fi
  if [ -n "${MANN:-}" ]; then
    if [ "$ways" -le 5 ]; then runs+=("$MANN/onehot5"); else runs+=("$MANN/string15"); fi
  fi
  kshot compare "${runs[@]}" "$out/knn-pixels" --ways "$ways" --shots 1 --queries 15 \
    --episodes 1000 --seed "$seed" --threads "$threads" --json
done
