#!/bin/bash
# Lead's call 1 (session 33): CUDA tests of the changed spectra/entropy code; stage 1's grouped
# updates (PANELS_PER_UPDATE 1-4) in spectrum_bench; row 1 under several settings side by side in
# one process (attention_stats_bench --compare: half-block Gram, early solve on a side stream,
# grouped updates), with the phase timeline; a profile of one call.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests: entropy, spectra, measurement experiments"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short -rfE \
  tests/test_repr_entropy.py tests/test_spectrum_two_stage.py tests/test_spectrum.py tests/test_measurement_experiments.py 2>&1 | tail -4
el "spectrum_bench two_stage PANELS_PER_UPDATE 1..4"
timeout 120 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --two-stage 16,4,1,0,1 16,4,1,0,2 16,4,1,0,3 16,4,1,0,4 16,4,1,0,1 \
  --out $OUT/spectrum_bench_h200_s33_call1.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "row 1 compared side by side (9 rounds) + phases"
timeout 200 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --phases \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s33_call1.json --compare \
  "entropy.HALF_BLOCKS=False" default \
  "entropy.EARLY_SOLVE_FRACTION=0.5" "entropy.EARLY_SOLVE_FRACTION=0.625" "entropy.EARLY_SOLVE_FRACTION=0.75" \
  "spectrum_two_stage.PANELS_PER_UPDATE=2" "spectrum_two_stage.PANELS_PER_UPDATE=4" \
  "entropy.EARLY_SOLVE_FRACTION=0.625;spectrum_two_stage.PANELS_PER_UPDATE=2" \
  "entropy.HALF_BLOCKS=False;entropy.EARLY_SOLVE_FRACTION=0.625" \
  2>&1 | grep -v -i "warn\|forward_call"
el "profile of one call (default settings), top kernels"
timeout 120 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --profile --repeat 1 \
  --lengths 4096 --agreement-tokens 0 2>&1 | grep -v -i "warn\|forward_call" | head -60
el end
