#!/bin/bash
# Lead's call 1 (session 32): the pipelined bulge chase. CUDA tests of the spectra; spectrum_bench's
# two_stage settings (BAND,WARPS,SLOTS; SLOTS 0 = one sweep at a time, session 31's kernel); row 1
# with its phase timeline at the new default (band 16, 4 warps, 16 sweeps in flight).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; git log --oneline -1 2>/dev/null
el "CUDA tests: spectra, entropy"
DROPE_LENS_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 --tb=short -rfE \
  tests/test_spectrum_two_stage.py tests/test_spectrum.py tests/test_repr_entropy.py 2>&1 | tail -15
el "spectrum_bench two_stage settings"
timeout 200 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 5 \
  --two-stage 16,4,0 16,8,16 16,16,16 16,4,8 32,4,0 32,4,8 32,8,8 32,16,8 8,4,32 \
  --out $OUT/spectrum_bench_h200_s32_call1.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 + phases, drope"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s32_call1.json 2>&1 | grep -v -i "warn\|forward_call"
el end
