#!/bin/bash
# Lead's call 4 (session 37), at 2aa169f (GPU code as in calls 1-3): the Exp 3 sweep against HF
# (last run in session 28), then row 1 twice more (5 runs each): call 3's 32k/64k run printed row 1 at 1.52x
# once (repeat 3), calls 1's two runs 1.48x and 1.46x.
set -o pipefail
W=bench_out/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el "start"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "generation_bench: Exp 3 sweep"
timeout 220 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --part sweep \
  --out $OUT/generation_bench_sweep_h200_s37.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ *"\|^{\|^ *}\|^ *\]'
for k in 1 2; do
  el "attention_stats_bench row 1, drope, run $k"
  timeout 80 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s37_call4_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call" | grep "Exp 4\|tokens:"
done
el end
