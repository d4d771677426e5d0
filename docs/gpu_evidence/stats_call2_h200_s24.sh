#!/bin/bash
# helper "stats", GPU call 2 (session 24): CUDA tests with the default kernel config (128x64 tiles,
# 4 warps, 3 stages), spectrum_bench with update-kernel tiles, attention_stats_bench at the default
# config (study size + profile of it, 4k agreement within one forward; 32k and 64k at this config are in call 1).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "from pathlib import Path; from drope_lens.benchmarks.random_checkpoint import bench_pair; print(bench_pair(Path('$W')))" > $OUT/checkpoint.log 2>&1 &
CKPT=$!
el "CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_attention_stats.py tests/test_spectrum.py tests/test_repr_entropy.py 2>&1 | tail -25 | tee $OUT/gpu_tests_stats_h200_s24.txt
el "spectrum_bench"
timeout 90 python3 -m drope_lens.benchmarks.spectrum_bench --skip-slow --out $OUT/spectrum_bench_h200_s24.json --update-tiles 32,128,4 16,128,4 64,64,4 32,256,8 8,512,4 64,128,8 2>&1 | grep -v Warning
el "waiting for the checkpoint"; wait $CKPT; tail -1 $OUT/checkpoint.log
el "attention_stats_bench"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --out $OUT/attention_stats_bench_h200_s24.json --lengths 4096 --repeat 3 --agreement-tokens 4096 --profile 2>&1 | grep -v Warning
el end
