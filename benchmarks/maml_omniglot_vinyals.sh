#!/usr/bin/env bash
# MAML (Finn et al. 2017) on Omniglot, the published Vinyals split (train 1028 characters x 4
# rotations, validation 172 x 4 selecting the checkpoint, test 423 x 4 = 1692 classes), 28x28, the
# paper's Omniglot network: Conv4 (64 filters) with stride-2 convolutions in place of the max-pools,
# the last map averaged, + linear head (kshot train maml's default since 2026-12-06; DOWNSAMPLE=max
# trains the max-pooled Conv4 of the runs before). One model per setting of the paper, with its
# settings: 5-way 1 inner step, alpha 0.4, meta-batch 32; 20-way 5 steps, alpha 0.1, meta-batch 16;
# queries = shots; Adam 1e-3; second order, after a first-order warm-up of WARMUP episodes if set
# (default 0: on these 2 cores first order learns far less per second than second order); and a
# first-order 5w1s model (fo5w1s). MODELS=ms5w1s trains a Meta-SGD one (Li et al. 2017: --meta-sgd,
# a learned inner rate per parameter element, initialised to alpha; one inner step at test, as they
# evaluate, where the MAML models take 3). MODELS=1step20w1s trains second-order MAML 20-way 1-shot
# with the 5-way inner loop (1 step of alpha 0.4 in training, 3 at test): about a quarter of the
# paper's 20-way meta-iteration (5 steps of alpha 0.1), for budgets that hold too few of those;
# MODELS=1step20w5s the same at 20-way 5-shot. At most BUDGET seconds (default 7200) of training
# each, JOBS (default 2) side by side on THREADS (default 2) cores. Validation every 16000 episodes
# (500 meta-iterations) of the 5-way models, every 3200 (200 meta-iterations) of the 20-way 1-shot
# one, whose meta-iterations are ~20 times the work (6400 for 1step20w1s, 3200 for 1step20w5s),
# every 640 (40 meta-iterations, ~30 minutes on one core) of the 20-way 5-shot one.
# The 20-way 5-shot model trains its meta-batch of 16 in chunks of 4 tasks (the same gradient; one
# pass of all 16 holds ~20 GB of second-order graphs).
# MODELS (default "5w1s 5w5s 20w1s 20w5s fo5w1s") picks the models. SCHEDULE (default constant, as
# the paper) sets the learning-rate schedule; cosine anneals Adam's rate to 0 over EPISODES (default
# 1920000, the paper's 60000 meta-iterations of 32; set it to what the budget holds).
# TRAIN_ON=trainval trains on all 1200 characters the papers train on (Vinyals et al., Finn et
# al.: 1028 train + 172 validation, x 4 rotations); such a run has no validation classes left and
# keeps its last checkpoint, so set a schedule that ends within the budget (SCHEDULE=cosine).
# TRAIN_ARGS adds `kshot train` arguments to every model's, e.g. TRAIN_ARGS="--precision bf16
# --augment affine --aug-translate 0.5" (mixed precision, Koch et al.'s distortions of the
# training images).
# Each model is then scored on 1000 test episodes of its own setting (15 queries per class, seeded
# EVAL_SEED, default 123) with batch norm both ways (per-episode statistics, as the paper, and the
# running averages): one `kshot eval --json` line each. The 5-way 1-shot models (second order, first
# order, Meta-SGD: those in MODELS) are compared on the same episodes in one `kshot compare --json`
# (table on stderr) when there are two or more.
# Re-run with another EVAL_SEED to re-score the finished runs without retraining.
# usage: bash benchmarks/maml_omniglot_vinyals.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/maml_omniglot_vinyals.sh OUT}
source "$(dirname "$0")/common.sh"
budget=${BUDGET:-7200}
warmup=${WARMUP:-0}
models=${MODELS:-"5w1s 5w5s 20w1s 20w5s fo5w1s"}
# shellcheck disable=SC2206  # TRAIN_ARGS is split into arguments on purpose
common=(--dataset omniglot --split vinyals --image-size 28 --seed 0 --threads "$per_job"
        --episodes "${EPISODES:-1920000}" --schedule "${SCHEDULE:-constant}" --downsample "${DOWNSAMPLE:-stride}" --val-episodes 200 --train-on "${TRAIN_ON:-train}"
        --time-budget "$budget" ${TRAIN_ARGS:-})
declare -A args=(
  [5w1s]="--ways 5 --shots 1 --val-every 16000 --first-order-episodes $warmup"
  [5w5s]="--ways 5 --shots 5 --val-every 16000 --first-order-episodes $warmup"
  [20w1s]="--ways 20 --shots 1 --val-every 3200 --first-order-episodes $warmup"
  [20w5s]="--ways 20 --shots 5 --val-every 640 --task-chunk 4 --first-order-episodes $warmup"
  [fo5w1s]="--ways 5 --shots 1 --val-every 16000 --first-order"
  [1step20w1s]="--ways 20 --shots 1 --val-every 6400 --first-order-episodes $warmup --inner-steps 1 --inner-lr 0.4 --test-inner-steps 3"
  [1step20w5s]="--ways 20 --shots 5 --val-every 3200 --task-chunk 4 --first-order-episodes $warmup --inner-steps 1 --inner-lr 0.4 --test-inner-steps 3"
  [ms5w1s]="--ways 5 --shots 1 --val-every 16000 --first-order-episodes $warmup --meta-sgd --test-inner-steps 1"
)
model_runs "$out" "maml ${common[*]}" $models
train_queues "$jobs"
[ -n "${TRAIN_ONLY:-}" ] && exit 0
for model in $models; do
  run_summary "$out/$model"
  ways=${model%%w*}; ways=${ways##*[a-z]}; shots=${model##*w}; shots=${shots%s}
  for norm in episode running; do
    kshot eval "$out/$model" --ways "$ways" --shots "$shots" --queries 15 --episodes 1000 \
      --seed "$seed" --threads "$threads" --set norm="$norm" --json
  done
done
compared=()
for model in 5w1s fo5w1s ms5w1s; do
  [[ " $models " == *" $model "* ]] && compared+=("$out/$model")
done
if [ "${#compared[@]}" -ge 2 ]; then
  kshot compare "${compared[@]}" --ways 5 --shots 1 --queries 15 --episodes 1000 \
    --seed "$seed" --threads "$threads" --json
fi
