#!/usr/bin/env bash
# Siamese networks on Omniglot, the published Vinyals split (train 1028 characters x 4 rotations,
# validation 172 x 4 selecting the checkpoint, test 423 x 4 = 1692 classes), 28x28, Conv4 twins:
# the contrastive loss, the triplet loss with each mining mode (all, hard, semihard) and Koch et
# al.'s weighted-L1 verification head (with their random affine distortions), each trained on
# batches of 32 classes x 4 images (an episode of 32 ways, 1 shot, 3 queries) for at most BUDGET
# seconds (default 3600). JOBS (default 2) runs train side by side, each on THREADS/JOBS cores. Then
# 1000 test episodes each of 5-way and 20-way 1-shot, 15 queries, seeded EVAL_SEED (default 123),
# and one `kshot compare` table per way on the same episodes. Re-run with another EVAL_SEED to
# re-score the finished runs without retraining.
# usage: bash benchmarks/siamese_omniglot_vinyals.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/siamese_omniglot_vinyals.sh OUT}
source "$(dirname "$0")/common.sh"
common="--dataset omniglot --split vinyals --image-size 28 --ways 32 --shots 1 --queries 3 --seed 0
        --threads $per_job --lr 0.001 --schedule step --decay-every 4000 --lr-decay 0.5
        --val-ways 20 --val-shots 1 --val-queries 5 --val-episodes 200 --val-every 1000
        --episodes 40000 --time-budget $budget"
RUNS=("$out/contrastive|siamese --loss contrastive $common"
      "$out/triplet-semihard|siamese --loss triplet --mining semihard $common"
      "$out/triplet-hard|siamese --loss triplet --mining hard $common"
      "$out/triplet-all|siamese --loss triplet --mining all $common"
      "$out/koch|siamese --loss koch $common --augment affine --aug-translate 1")
train_queues "$jobs"
names=(contrastive triplet-semihard triplet-hard triplet-all koch)
runs=()
for name in "${names[@]}"; do
  run_summary "$out/$name"
  runs+=("$out/$name")
done
for ways in 5 20; do
  kshot compare "${runs[@]}" --ways "$ways" --shots 1 --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
done
