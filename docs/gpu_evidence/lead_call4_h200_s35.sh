#!/bin/bash
# Lead's call 4 (session 35): the fused stage 1 against the unfused one and 16-row tiles, alternated
# in one spectrum_bench process and side by side in row 1 (rotated order); the two-stage CUDA tests;
# row 1 as always, twice, with its phases.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader
el "CUDA tests of the two-stage spectra"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=short -rfE \
  tests/test_spectrum_two_stage.py 2>&1 | tail -3
F16="spectrum_two_stage.FUSED_BLOCK=16;spectrum_two_stage.FUSED_WARPS=2"
UNF="spectrum_two_stage.FUSED_UPDATE=False"
el "spectrum_bench alternated: default (fused, 32-row tiles) / 16-row tiles / unfused, three times, medians of 9"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --settings default "$F16" "$UNF" default "$F16" "$UNF" default "$F16" "$UNF" \
  --out $OUT/spectrum_bench_h200_s35_call4.json 2>&1 | grep -v -i "warn" | grep -v "bisection\|band -> tri"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare (rotated order): default / 16-row tiles / unfused, 9 rounds"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --lengths 4096 \
  --agreement-tokens 0 --compare default "$F16" "$UNF" \
  --out $OUT/attention_stats_h200_s35_call4_compare.json 2>&1 | grep -v -i "warn\|forward_call"
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s35_call4_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call" | grep -v "rows \|_with_head"
done
el end
