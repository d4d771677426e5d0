#!/bin/bash
# Lead's call 1 (session 31): the two-stage CUDA tests not run yet (n = 1,000, in place); row 1's
# phase timeline (host perf_counter and CUDA events per phase, no profiler) on DroPE and RoPE;
# Exp 4 in study_bench with the models in the other order and 5 runs each (median).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests: two-stage spectra"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -n 4 --tb=short -rfE \
  tests/test_spectrum_two_stage.py 2>&1 | tail -4
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for v in drope rope; do
  el "attention_stats_bench row 1 + phases, $v"
  timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --variant $v --phases \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s31_call1_$v.json 2>&1 \
    | grep -v -i "warn\|forward_call"
done
el "study_bench Exp 4, drope then rope, 5 runs each"
timeout 150 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s31_call1_exp4.json \
  --only sinks --variants drope rope --repeat 5 2>&1 | grep "s ->\|HF work\|^ *sinks"
python3 -c "
import json; r = json.load(open('$OUT/study_bench_h200_s31_call1_exp4.json'))
for e in r['experiments']: print(e['variant'], [round(x, 4) for x in e.get('seconds_each_run', [])])"
el end
