#!/usr/bin/env bash
# Domain-adaptive meta-learning on sinusoid regression (the book's chapter-4 exercise): the model
# adapts from observations of the new task in another domain (o = 1 - 0.6 y + noise, a map it is
# never told; no labels) with a learned adaptation loss, against the meta-learned initialisation
# with no adaptation (steps 0) and MAML given the labels; and a control, daml-none, that observes
# nothing but where the points are. Finn's family, K = 5 and 10, Finn's MAML settings (70000 steps
# of 25 tasks, 1 inner step, alpha 0.01), at most BUDGET seconds (default 7200) per model. OUT is
# the folder of sinusoid_maml.sh: its MAML runs (OUT/finn-kK/maml) are reused when they are there.
# Scored on the same 1000 fresh tasks (EVAL_SEED, default 123) after 0, 1, 5, 10 steps: one JSON
# line per (model, K, steps); pictures OUT/finn-kK/sinusoid-daml*.png. Another EVAL_SEED re-scores.
# SHOTS (default "5 10") and OBSERVATIONS (default "shifted none") pick the models.
# usage: bash benchmarks/sinusoid_daml.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/sinusoid_daml.sh OUT}
source "$(dirname "$0")/common.sh"
budget=${BUDGET:-7200}
for shots in ${SHOTS:-5 10}; do
  for observation in ${OBSERVATIONS:-shifted none}; do
    baseline=(); [ "$observation" = none ] && baseline=(--no-baseline)
    kshot sinusoid daml --out "$out/finn-k$shots" --family finn --shots "$shots" \
      --observation "$observation" "${baseline[@]}" --iterations 70000 --time-budget "$budget" \
      --tasks 1000 --seed "$seed" --threads "$threads" --json --quiet
  done
done
