#!/bin/bash
# Lead's call 5 (session 34), at 218bf3d (GIL switch interval 0.2 ms during the overlap): row 1 side
# by side with the overlap off (--compare), then row 1 as always with its phase timeline.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare: overlap on / off, 9 interleaved rounds"
timeout 100 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --lengths 4096 \
  --agreement-tokens 0 --compare default "drope_lens.engine.measure.OVERLAP_TOKENIZER=False" \
  --out $OUT/attention_stats_h200_s34_call5_compare.json 2>&1 | grep -v -i "warn\|forward_call"
el "attention_stats_bench row 1 + phases, drope"
timeout 60 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s34_call5.json 2>&1 \
  | grep -v -i "warn\|forward_call"
el end
