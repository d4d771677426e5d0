#!/bin/bash
# Lead's call 3 (session 35): the fused stage-1 kernel's tiles and pipelining stages (spectrum_bench);
# row 1 side by side with the settings' order rotated every round (--compare: fused / unfused /
# 16-row tiles); one profiled call (kernel table for the next steps); row 1 as always with its phases.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "spectrum_bench: fused stage 1 settings, 320 matrices of 512, medians of 9"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --settings default "spectrum_two_stage.FUSED_BLOCK=16;spectrum_two_stage.FUSED_WARPS=2" \
  "spectrum_two_stage.FUSED_STAGES=2" "spectrum_two_stage.FUSED_STAGES=4" \
  "spectrum_two_stage.FUSED_UPDATE=False" default \
  --out $OUT/spectrum_bench_h200_s35_call3.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare (rotated order): default / unfused stage 1 / 16-row tiles, 9 rounds"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --lengths 4096 \
  --agreement-tokens 0 --compare default "spectrum_two_stage.FUSED_UPDATE=False" \
  "spectrum_two_stage.FUSED_BLOCK=16;spectrum_two_stage.FUSED_WARPS=2" \
  --out $OUT/attention_stats_h200_s35_call3_compare.json 2>&1 | grep -v -i "warn\|forward_call"
el "attention_stats_bench row 1 + phases + one profiled call, drope"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --profile --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s35_call3.json 2>&1 \
  | grep -v -i "warn\|forward_call"
el end
