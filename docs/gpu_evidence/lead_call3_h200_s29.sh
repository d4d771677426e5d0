#!/bin/bash
# Lead's call 3 (session 29): study_bench at main for every experiment except Exp 10, RoPE model,
# against the HF work each needs (session 28 changed the generation cache and the Exp 4 spectra's
# launch, which these experiments use; session 27's table is the last whole one).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "study_bench, RoPE, Exp 1-9"
timeout 540 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s29_exp1_9_rope.json \
  --variants rope --only massive-values disruption knowledge bos-ablation layer1-ablation sinks bos-write \
  attention-structure layer-balance \
  2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward"
el end
