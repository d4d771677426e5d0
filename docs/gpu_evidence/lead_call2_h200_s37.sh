#!/bin/bash
# Lead's call 2 (session 37), at cd5f065: the whole study, part 1 -- Exp 1-9 on both models, our side only
# (the total against the 10-minute target); then Exp 1, 2, 4, 5, 7, 8-9 on both models against their HF work,
# 5 runs each (medians).
set -o pipefail
W=bench_out/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el "start at cd5f065"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "study_bench Exp 1-9, both models, our side only"
timeout 330 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s37_exp1_9_nohf.json \
  --no-hf --only massive-values disruption knowledge bos-ablation layer1-ablation sinks bos-write \
  attention-structure layer-balance 2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward"
el "study_bench Exp 1, 2, 4, 5, 7, 8-9 against HF, both models, 5 runs each"
timeout 200 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s37_stats.json \
  --only massive-values disruption sinks bos-write attention-structure layer-balance --repeat 5 2>&1 \
  | grep -v -i "warn\|forward_call" | tail -14
el end
