#!/bin/bash
# Lead's call 1 (session 35), at 1fe13b3: stage 1's trailing update fused with the next panel's A V
# (spectrum_two_stage.FUSED_UPDATE) and the measurement forward's hooks registered as plain PyTorch
# hooks (engine.measure.DIRECT_HOOKS): the changed modules' CUDA tests; spectrum_bench with the
# fused kernel's tiles and without it; row 1 side by side (--compare) and as always with its phases.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of the changed modules"
DROPE_LENS_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=short -rfE \
  tests/test_spectrum.py tests/test_spectrum_two_stage.py tests/test_repr_entropy.py \
  tests/test_measurement_experiments.py 2>&1 | tail -8
el "spectrum_bench: fused stage 1 (tiles 32, 4 warps) against unfused, and other tiles; 320 matrices of 512, medians of 9"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --settings default "spectrum_two_stage.FUSED_UPDATE=False" "spectrum_two_stage.FUSED_WARPS=8" \
  "spectrum_two_stage.FUSED_BLOCK=64;spectrum_two_stage.FUSED_WARPS=8" \
  "spectrum_two_stage.FUSED_BLOCK=16;spectrum_two_stage.FUSED_WARPS=2" \
  "spectrum_two_stage.FUSED_UPDATE=False" default \
  --out $OUT/spectrum_bench_h200_s35_call1.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare: default / unfused stage 1 / hooks through model.hooks, 9 interleaved rounds"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --lengths 4096 \
  --agreement-tokens 0 --compare default "spectrum_two_stage.FUSED_UPDATE=False" \
  "drope_lens.engine.measure.DIRECT_HOOKS=False" \
  --out $OUT/attention_stats_h200_s35_call1_compare.json 2>&1 | grep -v -i "warn\|forward_call"
el "attention_stats_bench row 1 + phases, drope"
timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s35_call1.json 2>&1 \
  | grep -v -i "warn\|forward_call"
el end
