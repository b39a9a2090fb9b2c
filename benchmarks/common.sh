# Shared by the benchmark scripts: train a run unless it is finished (resume it if it was killed).
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
