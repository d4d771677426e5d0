#!/bin/bash
# Lead's final call (session 25) on merged main (one-launch spectrum + hostside + cudatests): the
# WHOLE test suite with models on CUDA in 6 xdist workers (test_notebook.py ignored: no Jupyter
# kernel on the device; nf4 tests skip: bitsandbytes does not fit this transfer with the toy pair),
# then the study-size statistics part (10 x 512, Exp 4+5+7+8-9) and 4k, repeat 5.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" > /tmp/ckpt.log 2>&1) &
CK=$!
el "whole test suite, models on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 270 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=line -rfEs \
  --ignore=tests/test_notebook.py tests > $OUT/gpu_tests_all_h200_s25_final.txt 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $OUT/gpu_tests_all_h200_s25_final.txt | cut -c1-200 | head -60
wait $CK; tail -1 /tmp/ckpt.log
el "attention_stats_bench: study part (10 x 512) + 4096"
timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --lengths 4096 --agreement-tokens 0 \
  --repeat 5 --profile --out $OUT/attention_stats_bench_h200_s25_final.json > $OUT/stats_profile_s25_final.txt 2>&1
grep -E "\->|Self (CPU|CUDA) time total|tridiagonalize_kernel|cudaMemcpyAsync|cudaStreamSynchronize|cudaEventSynchronize" $OUT/stats_profile_s25_final.txt | cut -c1-60,100-220
el end
