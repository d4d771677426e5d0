#!/bin/bash
# Lead's call 2 (session 35), at the head after 1fe13b3 (fused stage 1, direct hooks) plus Exp 7's
# distance rows copied in NumPy and the host captures released before the wait: row 1 as always,
# twice (5 runs each, with the phase timeline, now marking run_sweep and _measure_unsaved); the whole
# CUDA suite.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; git log --oneline -1 2>/dev/null
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s35_call2_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call"
done
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 330 python3 -m pytest -q -p no:cacheprovider -n 8 --ignore=tests/test_notebook.py \
  --tb=short -rfE tests 2>&1 | tail -25
el end
