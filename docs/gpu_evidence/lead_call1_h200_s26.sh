#!/bin/bash
# Lead's call 1 (session 26): the whole-study benchmark, part 1 -- every experiment but Exp 10 at the
# study's sizes, both 7B-shaped random models in one process (HF work replayed per experiment; the
# DroPE replay reused only when its forward log is identical to RoPE's).
set -o pipefail
W=bench_out/ckpt; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "checkpoint ready; study_bench part 1"
timeout 540 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s26_part1.json \
  --only massive-values disruption sinks bos-write attention-structure layer-balance knowledge bos-ablation layer1-ablation \
  2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run("
el end
