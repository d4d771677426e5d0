#!/bin/bash
# Lead's call 1 (session 30): the two-stage spectra (dense -> band -> tridiagonal) on CUDA: their
# tests, spectrum_bench against the one-launch default, then row 1 (Exp 4+5+7+8-9 at 10 x 512) and
# Exp 4 in study_bench with --spectrum-method two_stage against the default, in the same call.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "spectrum tests on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE \
  tests/test_spectrum_two_stage.py tests/test_spectrum.py 2>&1 | tail -25
el "spectrum_bench"
timeout 200 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 \
  --two-stage 16,4 32,2 32,8 64,4 64,8 --out $OUT/spectrum_bench_h200_s30.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for method in two_stage householder_persistent; do
  el "attention_stats_bench row 1, spectra: $method"
  timeout 100 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 4096 \
    --agreement-tokens 0 --repeat 3 --spectrum-method $method --out $OUT/attention_stats_h200_s30_$method.json 2>&1 \
    | grep -v -i "warn\|Loading weights"
done
el "study_bench Exp 4, both models, spectra: two_stage"
timeout 120 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s30_exp4_two_stage.json \
  --only sinks --spectrum-method two_stage \
  2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward" | grep "s ->\|HF work\|^ *sinks"
el end
