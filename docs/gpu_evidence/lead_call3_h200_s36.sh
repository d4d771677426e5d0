#!/bin/bash
# Lead's call 3 (session 36), the last device minutes, at the final code (X^T X back on cuBLAS, a docstring):
# CUDA tests of the changed module and of the measurement experiments; row 1 as always, once (5 runs, phases).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of the changed modules"
DROPE_LENS_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=short -rfE \
  tests/test_repr_entropy.py tests/test_measurement_experiments.py 2>&1 | tail -3
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 + phases, drope"
timeout 80 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s36_call3_run1.json 2>&1 \
  | grep -v -i "warn\|forward_call" | grep -v "rows \|_with_head\|garbage"
el end
