#!/bin/bash
# Lead's call 4 (session 33): the bulge chase with 2-D indices and its pivot column carried from
# step to step (CHASE_CARRY_PIVOT): its CUDA tests, spectrum_bench side by side with the default
# (4, 2 and 1 warps), row 1 with and without it, interleaved (9 rounds).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of the two-stage spectra"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short -rfE \
  tests/test_spectrum_two_stage.py 2>&1 | tail -2
el "spectrum_bench: BAND,WARPS,PREFETCH,SYMMETRIC,PANELS,CARRY"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --two-stage 16,4,1,0,1,1 16,4,1,0,1,0 16,2,1,0,1,1 16,1,1,0,1,1 16,4,1,0,1,1 \
  --out $OUT/spectrum_bench_h200_s33_call4.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "row 1 side by side (9 rounds), then as always"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s33_call4.json --compare \
  default "spectrum_two_stage.CHASE_CARRY_PIVOT=True" default "spectrum_two_stage.CHASE_CARRY_PIVOT=True" \
  2>&1 | grep -v -i "warn\|forward_call\|call [0-9]: "
el end
