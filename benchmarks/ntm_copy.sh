#!/usr/bin/env bash
# The copy task of the Neural Turing Machine (Graves, Wayne & Danihelka 2014, section 4.1): random
# 8-bit vectors, lengths 1-20 in training, then the sequence again from memory. An NTM (LSTM
# controller of 100 units, memory 128 x 20 starting from the constant 1e-6 (Collier & Beel 2018
# found it the fastest to converge), one read and one write head, shifts -1..1: 62,936 parameters)
# and an LSTM baseline of about the same size (3 layers of 56 units: 66,536) trained on the same
# sequences (batches of 32, Adam 1e-3, gradient norm clipped at 10), at most BUDGET seconds
# (default 7200) each, JOBS (default 2) side by side on THREADS (default 2) cores; MODELS (default
# "ntm lstm") picks them. Then both are scored on 1000 fresh sequences (seeded EVAL_SEED, default
# 123) of the training range and of lengths 30, 40, 60: one JSON line per (model, length), bits
# per sequence ± 95% CI, with the training sequences, seconds and sequences/s; the book's picture
# goes to OUT/copy.png. Another EVAL_SEED re-scores the finished runs without retraining.
# usage: bash benchmarks/ntm_copy.sh OUT
set -euo pipefail
out=${1:?usage: bash benchmarks/ntm_copy.sh OUT}
source "$(dirname "$0")/common.sh"
budget=${BUDGET:-7200}
models=${MODELS:-"ntm lstm"}
for model in $models; do
  kshot ntm copy --out "$out" --models "$model" --time-budget "$budget" --threads "$per_job" \
    --memory-init constant --train-only --quiet &
  if (( $(jobs -rp | wc -l) >= jobs )); then wait -n; fi
done
wait_all
# shellcheck disable=SC2086  # the model names are split on purpose
kshot ntm copy --out "$out" --models $models --memory-init constant --seed "$seed" \
  --threads "$threads" --json --quiet
