#!/bin/bash
# Lead's call 1 (session 28): the generation cache stores rotated keys on CUDA too
# (_CacheEntry.ROTATED_KEYS_ON = {cpu, cuda}). Its bit-exactness test and the whole CUDA suite, then
# greedy generation against HF and Exp 10 on DroPE (our side only) to compare with session 27.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "rotated-key cache test on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/test_generation_static.py 2>&1 | tail -5
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -n 6 \
  --ignore=tests/test_notebook.py --tb=line -rfE tests 2>&1 | tail -8
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "generation_bench: generation (repeat 3)"
timeout 120 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --part generation --repeat 3 \
  --out $OUT/generation_bench_h200_s28.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ *"\|^{\|^ *}'
el "study_bench Exp 10, DroPE, our side only"
timeout 200 python3 -m drope_lens.benchmarks.study_bench --workdir $W --only context-length --variants drope \
  --split-lengths --no-hf --out $OUT/study_bench_h200_s28_exp10_drope_nohf.json 2>&1 | grep -v -i "warn\|Loading weights" | tail -25
el end
