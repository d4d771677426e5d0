#!/bin/bash
# Lead's call 2 (session 30): two_stage is now the CUDA default (band 16) and its bulge chase
# prefetches. Its tests on CUDA; spectrum_bench over bands, warps and prefetch; row 1 with a profile
# and timeline (host phases, GPU idle gaps); Exp 4 in study_bench twice on both models.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "two-stage tests on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE \
  tests/test_spectrum_two_stage.py 2>&1 | tail -15
el "spectrum_bench"
timeout 200 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 \
  --two-stage 16,4,0 16,2 16,1 8,1 8,2 8,4 32,2 --out $OUT/spectrum_bench_h200_s30_call2.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 with profile"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 4096 \
  --agreement-tokens 0 --repeat 3 --profile --out $OUT/attention_stats_h200_s30_call2.json 2>&1 \
  | grep -v -i "warn\|Loading weights" | cut -c1-200
for i in 1 2; do
  el "study_bench Exp 4, both models, run $i"
  timeout 120 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s30_exp4_run$i.json \
    --only sinks 2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward" \
    | grep "s ->\|HF work\|^ *sinks"
done
el end
