#!/bin/bash
# Lead's call 2 (session 28): what the rotated-key generation cache (now on CUDA) changes where
# RoPE decodes: Exp 10 on RoPE one length at a time (our side; session 27's figures are
# study_bench_h200_s26_exp10_rope.json and _s27_exp10_rope16k.json) and the Exp 3 sweep against HF.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "study_bench Exp 10, RoPE, our side only"
timeout 260 python3 -m drope_lens.benchmarks.study_bench --workdir $W --only context-length --variants rope \
  --split-lengths --no-hf --out $OUT/study_bench_h200_s28_exp10_rope_nohf.json 2>&1 | grep -v -i "warn\|Loading weights" | grep "context-length @\|whole study"
el "generation_bench: Exp 3 sweep"
timeout 200 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --part sweep \
  --out $OUT/generation_bench_sweep_h200_s28.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ *"\|^{\|^ *}'
el end
