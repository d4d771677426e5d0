#!/bin/bash
# Lead's call 3 (session 34): did the tokenizer thread slow the host's frames (call 2's phases)?
# Row 1 side by side with and without it (--compare, interleaved rounds); then row 1 as always,
# twice, with its phase timeline; the measurement engine's CUDA tests.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; uptime
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare: tokenizer thread on / off, 9 interleaved rounds"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --lengths 4096 \
  --agreement-tokens 0 --compare default "drope_lens.engine.measure.OVERLAP_TOKENIZER=False" \
  --out $OUT/attention_stats_h200_s34_call3_compare.json 2>&1 | grep -v -i "warn\|forward_call"
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s34_call3_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call"
done
el "measurement engine CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=short -rfE \
  tests/test_measurement_experiments.py tests/test_repr_entropy.py tests/test_layout.py 2>&1 | tail -4
el end
