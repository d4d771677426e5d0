#!/bin/bash
# Lead's call 3 (session 30): the spectrum tests on CUDA (two_stage without a graph; the bisection
# with a refined hardware reciprocal), spectrum_bench's A/B of the reciprocal; row 1 after the host
# fixes (distance arrays, one-call _with_head, split as built) with the attention-statistics kernel
# swept at the study's size (10 x 512) and a profile; Exp 4 and Exp 7 in study_bench twice.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "spectrum tests on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE \
  tests/test_spectrum_two_stage.py tests/test_spectrum.py 2>&1 | tail -15
el "spectrum_bench"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 --two-stage 16,2 \
  --out $OUT/spectrum_bench_h200_s30_call3.json 2>&1 | grep -v -i "warn"
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench: row 1 with the default kernel config, then swept at 10 x 512, with a profile"
timeout 60 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 4096 \
  --agreement-tokens 0 --repeat 5 --out $OUT/attention_stats_h200_s30_call3_default.json 2>&1 \
  | grep -v -i "warn\|Loading weights" | grep "Exp 4"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 4096 \
  --agreement-tokens 0 --repeat 5 --profile --sweep-shape 10,512 \
  --sweep 128,64,4,3 64,64,4,3 64,64,4,2 64,32,4,3 32,64,4,3 128,32,4,3 64,64,2,3 64,128,4,3 128,64,8,3 32,32,2,3 \
  --out $OUT/attention_stats_h200_s30_call3_swept.json 2>&1 \
  | grep -v -i "warn\|Loading weights" | grep -v "^ *aten::\|^ *void \|^ *cuda\|^ *nvjet\|^ *sm90\|^--\|^ *Memcpy\|^ *Memset" | cut -c1-220
for i in 1 2; do
  el "study_bench Exp 4 + Exp 7, both models, run $i"
  timeout 120 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s30_call3_run$i.json \
    --only sinks attention-structure 2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward" \
    | grep "s ->\|HF work\|^ *sinks\|^ *attention"
done
el end
