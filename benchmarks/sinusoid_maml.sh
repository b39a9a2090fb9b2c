#!/usr/bin/env bash
# MAML on sinusoid regression (Finn et al. 2017, section 5.1) against the pre-trained baseline (the
# same MLP 40-40 ReLU trained on all tasks jointly, fine-tuned at test the same way), for Finn's
# family (amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5]) and the book's (phase 0 or pi), K = 5 and
# 10 (one model per K, trained with that K; runs in OUT/<family>-k<K>/{maml,pretrained}). Finn's
# settings: 70000 steps of 25 tasks, 10 query points, 1 inner step with alpha 0.01, Adam 1e-3; at
# most BUDGET seconds (default 7200) per model.
# Every model is scored on the same 1000 fresh tasks (seed EVAL_SEED, default 123; 100 query points
# each) after 0, 1, 5 and 10 steps: one JSON line per (model, K, steps); the book's picture is
# OUT/<family>-k<K>/sinusoid-maml.png. Re-run with another EVAL_SEED to re-score without retraining.
# usage: bash benchmarks/sinusoid_maml.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/sinusoid_maml.sh OUT}
source "$(dirname "$0")/common.sh"
budget=${BUDGET:-7200}
for family in finn book; do
  for shots in 5 10; do
    kshot sinusoid maml --out "$out/$family-k$shots" --family "$family" --shots "$shots" \
      --iterations 70000 --time-budget "$budget" --tasks 1000 --seed "$seed" \
      --threads "$threads" --json --quiet
  done
done
