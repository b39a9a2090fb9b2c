#!/usr/bin/env bash
# Lake's 20 one-shot runs (20-way 1-shot within an alphabet, 10 evaluation alphabets), training on
# the 30 background alphabets only (`lake` split, x 4 rotations as classes, no validation: the last
# checkpoint is scored), 28x28, Conv4:
# * a Koch-style Siamese net (weighted-L1 verification head, binary cross-entropy on same/different
#   pairs, Koch et al.'s random affine distortions), batches of 32 classes x 4 images;
# * Matching Networks with full-context embeddings, 20-way 1-shot 5-query episodes (shuffled);
# each at most BUDGET seconds (default 3600), JOBS (default 2) side by side. Then each run's error on
# Lake's runs, and one `kshot compare --lake-runs` table of both (and of the ProtoNet run PROTONET,
# if given: e.g. the protonet_omniglot_lake.sh run). Lake's runs are fixed: EVAL_SEED is accepted
# and recorded but changes nothing there; the script also scores 1000 5-way 1-shot episodes of the
# 659 evaluation characters seeded EVAL_SEED (default 123).
# usage: [PROTONET=RUN] bash benchmarks/siamese_koch_lake.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/siamese_koch_lake.sh OUT}
source "$(dirname "$0")/common.sh"
common="--dataset omniglot --split lake --rotations --image-size 28 --seed 0 --threads $per_job
        --lr 0.001 --schedule step --decay-every 4000 --lr-decay 0.5 --val-episodes 0
        --episodes 40000 --time-budget $budget"
RUNS=("$out/koch|siamese --loss koch --ways 32 --shots 1 --queries 3 --augment affine --aug-translate 1 $common"
      "$out/matching|matching --fce --ways 20 --shots 1 --queries 5 $common")
train_queues "$jobs"
runs=("$out/koch" "$out/matching")
[ -n "${PROTONET:-}" ] && runs+=("$PROTONET")
for run in "${runs[@]}"; do
  [ "$run" = "${PROTONET:-}" ] || run_summary "$run"
  kshot eval "$run" --lake-runs --threads "$threads" --json
  kshot eval "$run" --ways 5 --shots 1 --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
done
kshot compare "${runs[@]}" --lake-runs --threads "$threads"
