#!/bin/bash
# Lead's call 4 (session 34), at 9836ac5, the session's final GPU code: the first forward's hooks
# registered on a worker thread while the main thread tokenises; row 1 side by side with that off
# (--compare); row 1 as always, twice (the second with its phase timeline); the whole CUDA suite.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare: overlap on / off, 9 interleaved rounds"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --lengths 4096 \
  --agreement-tokens 0 --compare default "drope_lens.engine.measure.OVERLAP_TOKENIZER=False" \
  --out $OUT/attention_stats_h200_s34_call4_compare.json 2>&1 | grep -v -i "warn\|forward_call"
el "attention_stats_bench row 1, drope"
timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s34_call4_run1.json 2>&1 \
  | grep -v -i "warn\|forward_call"
el "attention_stats_bench row 1 + phases, drope"
timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s34_call4_run2.json 2>&1 \
  | grep -v -i "warn\|forward_call"
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 --ignore=tests/test_notebook.py \
  --tb=short -rfE tests 2>&1 | grep -v -i "warn" | tail -6
el end
