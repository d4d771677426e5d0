#!/bin/bash
# Lead's call 5 (session 33), at the session's final GPU code (the carried-pivot bulge chase on by
# default): the whole CUDA suite; row 1 as always (5 runs).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 260 python3 -m pytest -q -p no:cacheprovider -n 8 --ignore=tests/test_notebook.py \
  --tb=line -rfE tests 2>&1 | tail -3
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1, drope"
timeout 70 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s33_call5.json 2>&1 \
  | grep -v -i "warn\|forward_call\|call [0-9]: "
el end
