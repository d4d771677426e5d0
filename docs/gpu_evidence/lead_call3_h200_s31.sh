#!/bin/bash
# Lead's call 3 (session 31): where row 1's GPU time goes now (torch.profiler kernel table of one
# warm study-size measure call), and the phase timeline again.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 + profile + phases, drope"
timeout 200 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --profile \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s31_call3.json 2>&1 | grep -v -i "warn\|forward_call" \
  | cut -c1-70,100-240
el end
