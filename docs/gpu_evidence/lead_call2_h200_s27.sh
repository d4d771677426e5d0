#!/bin/bash
# Lead's call 2 (session 27): Exp 10 at the study's sizes on the DroPE 7B-shaped model, one length at
# a time (512 .. 16,384 x 2 formats x 20 trials), our times first, then the HF replays per length.
# Session 26 ran the RoPE half (lead_call3_h200_s26.sh); this is the missing DroPE half.
set -o pipefail
W=bench_out/ckpt; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "checkpoint ready; study_bench Exp 10 per length"
timeout 560 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s27_exp10_drope.json \
  --only context-length --variants drope --split-lengths --defer-hf \
  2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward"
el end
