#!/bin/bash
# Lead's call 2 (session 36), at the final GPU code (Triton Gram kernel, 32 x 32 tiles, 2 warps): row 1 as always,
# twice (5 runs each, with its phase timeline); Exp 4, 5, 7, 8-9 in study_bench, both models, 5 runs each
# (median); the whole CUDA suite.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s36_call2_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call" | grep -v "rows \|_with_head\|garbage"
done
el "study_bench Exp 4, 5, 7, 8-9, both models, 5 runs each"
timeout 150 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s36_call2_stats.json \
  --only sinks bos-write attention-structure layer-balance --repeat 5 2>&1 | grep -v -i "warn\|forward_call" | tail -12
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 --ignore=tests/test_notebook.py \
  --tb=short -rfE tests 2>&1 | tail -4
el end
