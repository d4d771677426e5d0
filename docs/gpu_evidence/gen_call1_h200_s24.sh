#!/bin/bash
# gen, GPU call 1 (session 24): CUDA tests of generation (graph == eager, static == dynamic, HF),
# then generation_bench --part all (8x256->32 vs HF generate; Exp 3 sweep vs HF with hooks, 420 prompts).
# Run from the archive root with PYTHONPATH set (see common.md's recipe).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_generation_static.py tests/test_generation_engine.py tests/test_generation.py 2>&1 | tail -15
el "write checkpoint"
timeout 90 python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "generation_bench --part all"
timeout ${BENCH_TIMEOUT:-270} python3 -m drope_lens.benchmarks.generation_bench --workdir $W --out $OUT/generation_bench_h200_s24.json --repeat 5 2>&1 | grep -v Warning
el end
