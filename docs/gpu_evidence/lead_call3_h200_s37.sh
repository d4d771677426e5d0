#!/bin/bash
# Lead's call 3 (session 37), at cd5f065: the whole study, part 2 -- Exp 10 (512 .. 16,384 tokens, 2 formats,
# 20 trials) on both models, our side only, one row per length; then all attention statistics on one
# sequence of 32k and 64k tokens.
set -o pipefail
W=bench_out/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el "start at cd5f065"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "study_bench Exp 10, both models, our side only"
timeout 420 python3 -m drope_lens.benchmarks.study_bench --workdir $W --only context-length --split-lengths --no-hf \
  --out $OUT/study_bench_h200_s37_exp10_nohf.json 2>&1 | grep -v -i "warn\|Loading weights" | grep "context-length @\|whole study\|context-length  \|Error\|error"
el "attention_stats_bench 32k / 64k"
timeout 140 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --lengths 32768 65536 \
  --agreement-tokens 0 --repeat 3 --out $OUT/attention_stats_h200_s37_long.json 2>&1 | grep -v -i "warn\|Loading weights"
el end
