#!/bin/bash
# Lead's call 1 (session 29): the whole CUDA suite at main after session 28's spectrum changes
# (ac4f7f3 mask fix, 0989a2d launch default), then issue 19's rows not re-measured in session 28:
# Exp 10 prefill throughput against HF sdpa (512 .. 16,384 tokens), row 1 (Exp 4+5+7+8-9 at
# 10 x 512) and all attention statistics on one sequence of 32k and 64k tokens.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; git log --oneline -1 2>/dev/null
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -n 6 \
  --ignore=tests/test_notebook.py --tb=line -rfE tests 2>&1 | tail -8
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "context_length_bench prefill"
timeout 100 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid \
  --lengths 512 1024 2048 4096 8192 16384 --repeat 5 --out $OUT/context_length_bench_h200_s29.json 2>&1 \
  | grep -v -i "warn\|Loading weights"
el "attention_stats_bench 32k / 64k (and row 1)"
timeout 140 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 32768 65536 \
  --agreement-tokens 0 --repeat 3 --out $OUT/attention_stats_h200_s29_long.json 2>&1 | grep -v -i "warn\|Loading weights"
el end
