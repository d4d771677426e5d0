#!/bin/bash
# Lead's call 5 (session 35): the two-stage spectra replayed as one CUDA graph (spectrum.TWO_STAGE_GRAPH)
# and 16-row tiles in the fused stage 1: CUDA tests of the changed modules; row 1 side by side with the
# graph off (rotated order); row 1 as always, twice, with its phases.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of the changed modules"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=short -rfE \
  tests/test_spectrum.py tests/test_spectrum_two_stage.py tests/test_repr_entropy.py \
  tests/test_measurement_experiments.py 2>&1 | tail -3
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench --compare (rotated order): default (graph) / spectrum.TWO_STAGE_GRAPH=False, 8 rounds"
timeout 120 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 8 --lengths 4096 \
  --agreement-tokens 0 --compare default "spectrum.TWO_STAGE_GRAPH=False" \
  --out $OUT/attention_stats_h200_s35_call5_compare.json 2>&1 | grep -v -i "warn\|forward_call"
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s35_call5_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call" | grep -v "rows \|_with_head"
done
el end
