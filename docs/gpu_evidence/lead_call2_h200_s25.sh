#!/bin/bash
# Lead's call 2 (session 25): strip sizes of the one-launch spectrum kernel, then the WHOLE test
# suite with models on CUDA (test_notebook.py ignored: the device has no Jupyter; it runs in CI).
set -o pipefail
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "spectrum_bench --quick with strip sweeps (320 x 512 x 512)"
timeout 100 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 \
  --persistent-tiles 4096,4 8192,8 16384,8 16384,16 32768,16 8192,4 \
  --out $OUT/spectrum_bench_h200_s25_call2.json 2>&1 | grep -v -i warn
el "whole test suite, models on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 400 python3 -m pytest -q -p no:cacheprovider --durations=15 \
  --ignore=tests/test_notebook.py tests 2>&1 | tee $OUT/gpu_tests_all_h200_s25_call2.txt | tail -45
el end
