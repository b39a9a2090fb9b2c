#!/usr/bin/env bash
# The easyfsl protocol, both libraries in one run: ProtoNet, Conv4, 28x28, trained on 5000 5-way
# 1-shot 15-query episodes of the 30 background alphabets (x 4 rotations as extra training classes),
# scored on 1000 5-way 1-shot 15-query episodes of the 659 *unrotated* evaluation characters (the
# same test set for both; the episodes are each library's own). Both train on all 964 background
# characters (kshot: --train-on trainval) and keep their last weights. kshot: Euclidean distance
# (easyfsl's), learning rate halved every 2000 episodes (as the peer script). easyfsl:
# ../shared/peers/protonet_easyfsl.py. EVAL_SEED (default 123) re-scores the kshot run on other
# episodes (the peer's line is kept in OUT/easyfsl.json and printed again).
# usage: bash benchmarks/protonet_easyfsl_protocol.sh OUT   (THREADS=2; PEER=0 skips easyfsl)
set -euo pipefail
out=${1:?usage: bash benchmarks/protonet_easyfsl_protocol.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
train_run "$out" protonet --dataset omniglot --split lake --image-size 28 --ways 5 --shots 1 \
  --queries 15 --episodes 5000 --seed 0 --threads "$threads" --lr 0.001 --distance euclidean \
  --rotations --schedule step --decay-every 2000 --lr-decay 0.5 --train-on trainval
run_summary "$out"
kshot eval "$out" --ways 5 --shots 1 --queries 15 --episodes 1000 --seed "$seed" --threads "$threads" --json
if [ "${PEER:-1}" = 1 ]; then
  peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
  peer_python=${PEER_PYTHON:-$HOME/.cache/kshot-peers/venv/bin/python}
  export OMNIGLOT_DIR=${OMNIGLOT_DIR:-${KSHOT_DATA_DIR:-$peers/../data}/omniglot}
  [ -f "$out/easyfsl.json" ] || "$peer_python" "$peers/protonet_easyfsl.py" --episodes 5000 \
    --eval-episodes 1000 --threads "$threads" | tail -n 1 > "$out/easyfsl.json"
  cat "$out/easyfsl.json"
fi
