#!/bin/bash
# Lead's call 4 (session 27): issue 19's rows that were met on records of sessions 24-25, measured
# again on this session's main: Exp 10 prefill throughput against HF sdpa (512 .. 16,384 tokens),
# all attention statistics on one sequence of 32k and 64k tokens, greedy generation and the Exp 3
# sweep against HF.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "context_length_bench prefill"
timeout 90 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid \
  --lengths 512 1024 2048 4096 8192 16384 --repeat 5 --out $OUT/context_length_bench_h200_s27.json 2>&1 \
  | grep -v -i "warn\|Loading weights"
el "attention_stats_bench 32k / 64k"
timeout 130 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 32768 65536 \
  --agreement-tokens 0 --repeat 3 --out $OUT/attention_stats_h200_s27_long.json 2>&1 | grep -v -i "warn\|Loading weights"
el "generation_bench: generation (repeat 3) + Exp 3 sweep"
timeout 210 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --repeat 3 \
  --out $OUT/generation_bench_h200_s27.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ *"\|^{\|^ *}'
el end
