#!/bin/bash
# Lead's call 1 (session 25): the one-launch spectrum kernel (tests + spectrum_bench --quick), the
# study-size statistics part with a profile, then the WHOLE test suite with models on CUDA.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" > /tmp/ckpt.log 2>&1) &
CK=$!
el "spectrum tests on CUDA"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_spectrum.py tests/test_repr_entropy.py 2>&1 | tail -4
el "spectrum_bench --quick (320 x 512 x 512)"
timeout 60 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 --out $OUT/spectrum_bench_h200_s25.json 2>&1 | grep -v -i warn
wait $CK; tail -1 /tmp/ckpt.log
el "attention_stats_bench: study part (10 x 512) + profile"
timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --lengths 4096 --agreement-tokens 0 \
  --repeat 5 --profile --out $OUT/attention_stats_bench_h200_s25_call1.json > $OUT/stats_profile_s25_call1.txt 2>&1
grep -v -i "warn\|Loading weights" $OUT/stats_profile_s25_call1.txt | grep -i "x\b\|->\|tokens" | head -5
el "whole test suite, models on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 285 python3 -m pytest -q -p no:cacheprovider --durations=12 tests 2>&1 \
  | tee $OUT/gpu_tests_all_h200_s25_call1.txt | tail -40
el end
