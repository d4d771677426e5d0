#!/bin/bash
# Lead's call 3 (session 27): the whole test suite on CUDA (session 26's cusolver code included),
# then the one Exp 10 cell whose HF replay session 26 could not finish: RoPE at 16,384 tokens.
set -o pipefail
W=bench_out/ckpt; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA test suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -n 6 --ignore=tests/test_notebook.py \
  --tb=line -rfE tests 2>&1 | tail -15
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "checkpoint ready; study_bench Exp 10 RoPE at 16,384"
timeout 240 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s27_exp10_rope16k.json \
  --only context-length --variants rope --split-lengths --lengths 16384 \
  2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward"
el end
