# Shared by the benchmark scripts. The environment they all read, with its defaults:
# THREADS (cores to use, 2), JOBS (runs trained side by side, 2), EVAL_SEED (seed of the test
# episodes, 123: another seed re-scores finished runs without retraining), BUDGET (seconds of
# training per run, 3600); per_job is the threads of each of the JOBS side-by-side runs.
threads=${THREADS:-2}
jobs=${JOBS:-2}
seed=${EVAL_SEED:-123}
budget=${BUDGET:-3600}
per_job=$(( threads / jobs > 0 ? threads / jobs : 1 ))

# Train a run unless it is finished (resume it if it was killed).
# usage: train_run OUT_DIR kshot-train-arguments...
train_run() {
  local dir=$1; shift
  if [ -f "$dir/last.json" ] && python -c "import json,sys; sys.exit(0 if json.load(open('$dir/last.json'))['finished'] else 1)"; then
    echo "# $dir holds a finished run: not retraining" >&2
    return 0
  fi
  local resume=()
  [ -f "$dir/config.json" ] && resume=(--resume)
  kshot train "$@" --out "$dir" "${resume[@]}" --quiet
}

# Training time, episodes and best validation accuracy of a finished run, as one JSON line.
run_summary() {
  python -c "import json; m=json.load(open('$1/last.json')); print(json.dumps({'run': '$1', 'episodes': m['episodes'], 'train_seconds': m['elapsed_seconds'], 'best_val_accuracy': round(m['best_accuracy']*100, 2) if m['best_accuracy'] >= 0 else None}))"
}

# Wait for every background job of the calling shell; fail if any failed.
wait_all() {
  local failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return $failed
}

# Set RUNS (below) to one entry per model of MODEL...: "OUT/MODEL|METHOD_ARGS ARGS", ARGS being the
# model's entry in the caller's associative array `args`; an unknown model is an error (exit 2).
# usage: declare -A args=([shot1]="--shots 1" ...); model_runs OUT "protonet ${common[*]}" $models
model_runs() {
  local out=$1 method_args=$2 model; shift 2
  RUNS=()
  for model in "$@"; do
    if [ -z "${args[$model]:-}" ]; then
      echo "unknown model $model (choose from: ${!args[*]})" >&2
      exit 2
    fi
    RUNS+=("$out/$model|$method_args ${args[$model]}")
  done
}

# Train the runs named in the array RUNS (entries "DIR|method args...") JOBS at a time: the runs
# are dealt round-robin into JOBS queues that run side by side, each queue one run after another.
# usage: RUNS=("out/a|protonet --shots 1" ...); train_queues JOBS
train_queues() {
  local jobs=$1 queue entry
  for (( queue = 0; queue < jobs; queue++ )); do
    (
      for (( i = queue; i < ${#RUNS[@]}; i += jobs )); do
        entry=${RUNS[$i]}
        # shellcheck disable=SC2086  # the method arguments are split on purpose
        train_run "${entry%%|*}" ${entry#*|}
      done
    ) &
  done
  wait_all
}
