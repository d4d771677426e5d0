#!/bin/bash
# Lead's call 2 (session 26): the whole-study benchmark, part 2 -- Exp 10 at the study's sizes
# (512 .. 16,384 tokens x 2 formats x 20 trials) on both 7B-shaped random models, preceded by the
# short experiments again now that the warm-up runs the statistics at the study's shape and the HF
# model is warmed before its first replay (call 1 charged ~1 s of compilation to RoPE's first
# experiments and HF start-up to the first replay).
set -o pipefail
W=bench_out/ckpt; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "checkpoint ready; study_bench part 2"
timeout 530 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s26_part2.json \
  --only massive-values disruption sinks bos-write attention-structure layer-balance context-length \
  2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run("
el end
