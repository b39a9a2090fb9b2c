#!/usr/bin/env bash
# The LSTM meta-learner (Ravi & Larochelle 2017) on Omniglot, the published Vinyals split (train
# 1028 characters x 4 rotations, validation 172 x 4 selecting the checkpoint, test 423 x 4 = 1692
# classes), 28x28; the learner a 4-block conv net of 32 filters, batch norm per episode, T = 5
# updates. One model per setting, 5-way 1-shot and 5-way 5-shot, each trained with its own shot
# (15 queries per class, Adam 1e-3; the method's defaults: at 1-shot the paper's 1 episode per step
# with the meta-gradient's norm clipped to 0.25, at 5-shot 4 episodes per step, unclipped; the
# 1-shot runs in BENCHMARKS.md before its sixteenth session took META_BATCH=4 GRAD_CLIP=0) for at
# most BUDGET seconds (default 7200), JOBS (default 2) side by side on THREADS (default 2) cores;
# MODELS (default "5w1s 5w5s") picks them.
# Each model is scored on 1000 test episodes of its setting (15 queries, seeded EVAL_SEED, default
# 123): one `kshot eval --json` line each. With MAML=DIR (the maml_omniglot_vinyals.sh output
# folder), one `kshot compare --json` per setting sets the LSTM meta-learner beside MAML's model
# of that setting on the same episodes (table on stderr). Another EVAL_SEED re-scores.
# SCHEDULE (default constant), EPISODES (default 400000) and TRAIN_ON (default train) as in
# maml_omniglot_vinyals.sh; INNER_STEPS (default the method's 5) sets the updates T of training and
# test (Ravi & Larochelle's code: 12 at 1-shot on miniImageNet); META_BATCH (episodes per step) and
# GRAD_CLIP (largest meta-gradient norm, 0 for none) override the method's defaults when set.
# usage: [MAML=DIR] bash benchmarks/meta_lstm_omniglot_vinyals.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/meta_lstm_omniglot_vinyals.sh OUT}
source "$(dirname "$0")/common.sh"
budget=${BUDGET:-7200}
models=${MODELS:-"5w1s 5w5s"}
common=(--dataset omniglot --split vinyals --image-size 28 --seed 0 --threads "$per_job"
        --episodes "${EPISODES:-400000}" --schedule "${SCHEDULE:-constant}" --train-on "${TRAIN_ON:-train}" --time-budget "$budget"
        ${INNER_STEPS:+--inner-steps "$INNER_STEPS"} ${META_BATCH:+--meta-batch "$META_BATCH"}
        ${GRAD_CLIP:+--grad-clip "$GRAD_CLIP"})
declare -A args=([5w1s]="--ways 5 --shots 1" [5w5s]="--ways 5 --shots 5")
model_runs "$out" "meta-lstm ${common[*]}" $models
train_queues "$jobs"
[ -n "${TRAIN_ONLY:-}" ] && exit 0
for model in $models; do
  shots=${model##*w}; shots=${shots%s}
  run_summary "$out/$model"
  score=(eval "$out/$model")
  if [ -n "${MAML:-}" ] && [ -d "$MAML/$model" ]; then score=(compare "$out/$model" "$MAML/$model"); fi
  kshot "${score[@]}" --ways 5 --shots "$shots" --queries 15 --episodes 1000 \
    --seed "$seed" --threads "$threads" --json
done
