#!/bin/bash
# gen, GPU call 3 (session 24) - NOT RUN (the helper's device budget was spent). For the lead: re-times
# both rows of issue 19 owned by gen with the graph-safe Exp 3 conditions, in one process.
# Estimate from calls 1-2: checkpoint 30 s, model loads ~30 s, generation part ~30 s, sweep: HF 82 s
# + ours (now CUDA-graph decoding) + warm-ups ~20 s, tests ~25 s: about 4.5 min; use timeout_s 360.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start
el "CUDA tests (graph-safe position-0 hooks were marked after call 2)"
DROPE_LENS_TEST_DEVICE=cuda timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_generation_static.py 2>&1 | tail -8
el "write checkpoint"
timeout 90 python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "generation_bench --part all"
timeout 290 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --out $OUT/generation_bench_h200_s24_final.json --repeat 5 2>&1 | grep -v Warning
el end
