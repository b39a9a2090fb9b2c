#!/usr/bin/env bash
# Training and evaluation throughput (Conv4, 28x28, 5-way 1-shot 15-query, 2 threads), kshot beside
# easyfsl 1.5 in the same run on the same machine (machines of this kind differ by up to 2x, so only
# ratios from one run mean anything). --method protonet (default) or matching (full-context
# embeddings, beside easyfsl's MatchingNetworks, which has them built in); --method siamese runs
# kshot alone (no peer library has a Siamese network to set beside it); --method maml runs
# second-order MAML beside learn2learn 0.2 (meta-batch 32, 1 query per class, 1 inner step with
# alpha 0.4; train_episodes_per_s counts meta-iterations, TRAIN_EPISODES of them, default 30) and
# checks that kshot's peak memory after MEMORY_ITERATIONS (default 2000) meta-iterations is that
# after 100 (set MEMORY_ITERATIONS=0 to skip the check, which takes most of the time); ROUNDS
# (default 3) alternate the two libraries and the last line gives the median ratio; with BF16=1 each
# round also trains kshot in mixed precision (--precision bf16), reported as kshot_bf16_train and
# ratio_train_bf16 beside the float32 figures.
# Runs, in this order: kshot (compiled / fused backbones, the default), kshot eager (--no-compile),
# kshot training in mixed precision (--precision bf16; evaluation stays fp32), easyfsl, and
# easyfsl with the glibc allocator settings kshot applies to itself
# (MALLOC_*_THRESHOLD_), so no gain comes from those alone. Every line has peak_rss_mb.
# Needs the peers' venv: bash ../shared/peers/setup_venv.sh (PEER_PYTHON overrides its python).
# usage: bash benchmarks/throughput.sh [--method protonet|matching|siamese|maml]
#   -> one JSON line per library, then one with the ratios
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
method=protonet
while [ $# -gt 0 ]; do
  case $1 in
    --method) method=${2:?--method needs a value}; shift 2 ;;
    --method=*) method=${1#--method=}; shift ;;
    *) echo "usage: bash benchmarks/throughput.sh [--method protonet|matching|siamese|maml]" >&2; exit 2 ;;
  esac
done
case $method in
  protonet|matching|siamese|maml) ;;
  *) echo "unknown --method $method: use protonet, matching, siamese or maml" >&2; exit 2 ;;
esac
threads=${THREADS:-2}
train=${TRAIN_EPISODES:-300}
evals=${EVAL_EPISODES:-1000}
peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
peer_python=${PEER_PYTHON:-$HOME/.cache/kshot-peers/venv/bin/python}
export OMNIGLOT_DIR=${OMNIGLOT_DIR:-${KSHOT_DATA_DIR:-$peers/../data}/omniglot}
kshot_args=(--method "$method" --threads "$threads" --train-episodes "$train" --eval-episodes "$evals")
if [ "$method" = maml ]; then
  [ -x "$peer_python" ] || { echo "no peers venv at $peer_python: run bash $peers/setup_venv.sh" >&2; exit 2; }
  train=${TRAIN_EPISODES:-30}; evals=${EVAL_EPISODES:-200}
  kshot_args=(--method maml --threads "$threads" --train-episodes "$train" --eval-episodes "$evals")
  # ROUNDS (default 3) alternate kshot and learn2learn, so a change in the machine's speed during
  # the run (seen here: learn2learn from 1.06 to 1.52 meta-iterations/s within ten minutes) falls
  # on both; the summary gives each round's ratio and their median. The memory check runs in the
  # first round only.
  lines=$(mktemp)
  trap 'rm -f "$lines"' EXIT
  for round in $(seq 1 "${ROUNDS:-3}"); do
    memory=0
    [ "$round" = 1 ] && memory=${MEMORY_ITERATIONS:-2000}
    ours=$(python "$here/throughput.py" "${kshot_args[@]}" --memory-check "$memory")
    echo "$ours"
    if [ -n "${BF16:-}" ]; then  # kshot training in mixed precision too (evaluation stays fp32)
      half=$(python "$here/throughput.py" "${kshot_args[@]}" --precision bf16)
      echo "$half"
      printf '%s\n' "$half" >> "$lines"
    fi
    peer=$(python "$here/peak_rss.py" "$peer_python" "$peers/maml_l2l.py" --episodes "$train" --eval-episodes "$evals" --threads "$threads" | tail -n 1)
    echo "$peer"
    printf '%s\n%s\n' "$ours" "$peer" >> "$lines"
  done
  python - "$lines" <<'PY'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
peers = [r for r in records if "peer" in r]
ours = [r for r in records if r.get("library") == "kshot" and r["precision"] == "fp32"]
halves = [r for r in records if r.get("library") == "kshot" and r["precision"] == "bf16"]
def peer_eval(peer):
    return peer["eval_episodes"] / peer["eval_seconds"]
train = [o["train_episodes_per_s"] / p["episodes_per_s"] for o, p in zip(ours, peers)]
evals = [o["eval_episodes_per_s"] / peer_eval(p) for o, p in zip(ours, peers)]
first = ours[0]
print(json.dumps({
    "method": "maml", "rounds": len(ours),
    "kshot_train": [o["train_episodes_per_s"] for o in ours],
    "learn2learn_train": [p["episodes_per_s"] for p in peers],
    "kshot_eval": [o["eval_episodes_per_s"] for o in ours],
    "learn2learn_eval": [round(peer_eval(p), 2) for p in peers],
    "ratio_train_rounds": [round(r, 2) for r in train],
    "ratio_eval_rounds": [round(r, 2) for r in evals],
    "ratio_train": round(statistics.median(train), 2),
    "ratio_eval": round(statistics.median(evals), 2),
    "kshot_peak_rss_mb": max(o["peak_rss_mb"] for o in ours),
    "learn2learn_peak_rss_mb": max(p["peak_rss_mb"] for p in peers),
    "kshot_peak_rss_mb_after_100": first.get("peak_rss_mb_after_100"),
    "kshot_peak_rss_mb_after_n": max((v for k, v in first.items() if k.startswith("peak_rss_mb_after_") and k != "peak_rss_mb_after_100"), default=None),
    **({"kshot_bf16_train": [h["train_episodes_per_s"] for h in halves],
        "ratio_train_bf16": round(statistics.median(
            h["train_episodes_per_s"] / p["episodes_per_s"] for h, p in zip(halves, peers)), 2)}
       if halves else {}),
    "ratio_note": "median over rounds of kshot/learn2learn, run alternately (kshot_bf16: --precision bf16 training, BF16=1); meta-iterations/s (32 tasks each), second order; eval: 5-way 1-shot 15 queries, 1 inner step",
}))
PY
  exit 0
fi
fast=$(python "$here/throughput.py" "${kshot_args[@]}")
echo "$fast"
eager=$(python "$here/throughput.py" "${kshot_args[@]}" --no-compile)
echo "$eager"
bf16=$(python "$here/throughput.py" "${kshot_args[@]}" --precision bf16)
echo "$bf16"
if [ "$method" = siamese ]; then
  python - "$fast" "$eager" "$bf16" <<'PY'
import json, sys
fast, eager, bf16 = (json.loads(a) for a in sys.argv[1:])
print(json.dumps({"method": "siamese", "kshot_train": fast["train_episodes_per_s"],
                  "kshot_eval": fast["eval_episodes_per_s"], "kshot_peak_rss_mb": fast["peak_rss_mb"],
                  "kshot_eager_train": eager["train_episodes_per_s"],
                  "kshot_eager_eval": eager["eval_episodes_per_s"],
                  "kshot_bf16_train": bf16["train_episodes_per_s"],
                  "ratio_train": None, "ratio_eval": None,
                  "ratio_note": "no peer library implements a Siamese network"}))
PY
  exit 0
fi
[ -x "$peer_python" ] || { echo "no peers venv at $peer_python: run bash $peers/setup_venv.sh" >&2; exit 2; }
peer_script=$peers/${method}_easyfsl.py
peer=$(python "$here/peak_rss.py" "$peer_python" "$peer_script" --episodes "$train" --eval-episodes "$evals" --threads "$threads" | tail -n 1)
echo "$peer"
peer_malloc=$(MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \
  python "$here/peak_rss.py" "$peer_python" "$peer_script" --episodes "$train" --eval-episodes "$evals" --threads "$threads" | tail -n 1)
echo "$peer_malloc" | python -c "import json,sys; r=json.loads(sys.stdin.read()); r['malloc_thresholds']=True; print(json.dumps(r))"
python - "$method" "$fast" "$eager" "$bf16" "$peer" "$peer_malloc" <<'PY'
import json, sys
method = sys.argv[1]
fast, eager, bf16, peer, malloc = (json.loads(a) for a in sys.argv[2:])
def eval_rate(r):
    return r["eval_episodes"] / r["eval_seconds"]
best_peer_train = max(peer["episodes_per_s"], malloc["episodes_per_s"])
best_peer_eval = max(eval_rate(peer), eval_rate(malloc))
print(json.dumps({
    "method": method,
    "kshot_train": fast["train_episodes_per_s"], "kshot_eval": fast["eval_episodes_per_s"],
    "kshot_eager_train": eager["train_episodes_per_s"], "kshot_eager_eval": eager["eval_episodes_per_s"],
    "easyfsl_train": peer["episodes_per_s"], "easyfsl_eval": round(eval_rate(peer), 2),
    "easyfsl_malloc_train": malloc["episodes_per_s"], "easyfsl_malloc_eval": round(eval_rate(malloc), 2),
    "kshot_peak_rss_mb": fast["peak_rss_mb"], "easyfsl_peak_rss_mb": peer["peak_rss_mb"],
    "kshot_bf16_train": bf16["train_episodes_per_s"],
    "ratio_train": round(fast["train_episodes_per_s"] / best_peer_train, 2),
    "ratio_train_bf16": round(bf16["train_episodes_per_s"] / best_peer_train, 2),
    "ratio_eval": round(fast["eval_episodes_per_s"] / best_peer_eval, 2),
    "ratio_note": "kshot (default: fp32; ratio_train_bf16: --precision bf16) over the faster of easyfsl and easyfsl with kshot's allocator settings",
}))
PY
