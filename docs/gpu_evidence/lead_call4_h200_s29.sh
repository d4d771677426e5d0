#!/bin/bash
# Lead's call 4 (session 29): call 3 measured Exp 1 (massive-values) on RoPE at 1.22x its HF work
# (0.18 s, one timed run; session 27: 1.16x). Two more study_bench runs of Exp 1 and Exp 4 on both
# models, to see how much one such run varies.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for i in 1 2; do
  el "study_bench Exp 1 + Exp 4, both models, run $i"
  timeout 150 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s29_exp1_exp4_run$i.json \
    --only massive-values sinks \
    2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward" | grep "s ->\|HF work\|^ *massive\|^ *sinks"
done
el end
