#!/usr/bin/env bash
# Memory-augmented neural network with least-recently-used access (Santoro et al. 2016) on Omniglot,
# Santoro's protocol on the published Vinyals split (train 1028 characters x 4 rotations, validation
# 172 x 4, test 423 x 4), images downsampled to 20x20. Two models, each trained at most BUDGET
# seconds (default 7200): 5 classes with one-hot labels, and 15 classes with the paper's 5-character
# string labels. Episodes of the classes x 10 images in a seeded random order, the correct label of
# each step given at the next, labels reshuffled per episode, random rotations and translations,
# 16 episodes per step (the method's train_defaults). With JOBS=2 (default) both train at once, each
# on one of the THREADS=2 cores; finished runs are not retrained, killed ones are resumed. Then, for
# each run, one `kshot santoro --json` line (accuracy by instance, 1st-5th and 10th presentation, on
# 1000 test episodes seeded EVAL_SEED, default 123) and one `kshot eval --json` line on 1000 standard
# 5-way 1-shot episodes (15 queries) of the test set. Re-run with another EVAL_SEED to re-score the
# finished runs on other episodes without retraining. MODELS (default "onehot5 string15") picks the
# models.
# usage: bash benchmarks/mann_omniglot.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/mann_omniglot.sh OUT}
BUDGET=${BUDGET:-7200}
source "$(dirname "$0")/common.sh"
common=(--dataset omniglot --split vinyals --image-size 20 --seed 0 --threads "$per_job"
        --time-budget "$budget")
models=${MODELS:-"onehot5 string15"}
declare -A args=([onehot5]="--ways 5 --labels onehot" [string15]="--ways 15 --labels string")
model_runs "$out" "mann ${common[*]}" $models
train_queues "$jobs"
for model in $models; do
  run=$out/$model
  run_summary "$run"
  kshot santoro "$run" --episodes 1000 --seed "$seed" --threads "$threads" --json
  kshot eval "$run" --ways 5 --shots 1 --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
done
