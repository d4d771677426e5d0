#!/bin/bash
# Lead's call 3 (session 32): the two-stage spectra's band (16 / 32), warps and whole diagonal blocks
# in the bulge chase, side by side in spectrum_bench (medians of 9); row 1 under three settings.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of the chase's settings"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider -n 4 --tb=short -rfE \
  tests/test_spectrum_two_stage.py 2>&1 | tail -2
el "spectrum_bench two_stage settings (BAND,WARPS,PREFETCH,SYMMETRIC)"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --two-stage 16,4,1,1 32,4,1,0 32,4,1,1 32,2,1,0 32,8,1,0 16,4,1,0 \
  --out $OUT/spectrum_bench_h200_s32_call3.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for s in 16,4,1,0 32,4,1,0 16,4,1,1 32,4,1,1; do
  el "row 1 with --two-stage-settings $s"
  timeout 100 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --two-stage-settings $s --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s32_call3_$s.json 2>&1 | grep "Exp 4"
done
el end
