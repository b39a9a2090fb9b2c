#!/usr/bin/env bash
# ProtoNet training and evaluation throughput: Conv4, 28x28, 5-way 1-shot 15-query, 2 threads.
# usage: bash benchmarks/throughput.sh     -> one JSON line
set -euo pipefail
python "$(dirname "$0")/throughput.py" --threads "${THREADS:-2}" "$@"
