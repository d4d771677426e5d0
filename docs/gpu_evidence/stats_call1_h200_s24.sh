#!/bin/bash
# helper "stats", GPU call 1 (session 24): CUDA tests of the attention-statistics and spectrum
# modules, spectrum_bench (CUDA graph vs eager), attention_stats_bench with a kernel sweep
# (study size, 4k agreement, 32k, 64k). Run from the archive root with PYTHONPATH set.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "from pathlib import Path; from drope_lens.benchmarks.random_checkpoint import bench_pair; print(bench_pair(Path('$W')))" > $OUT/checkpoint.log 2>&1 &
CKPT=$!
el "CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_attention_stats.py tests/test_spectrum.py tests/test_repr_entropy.py 2>&1 | tail -25 | tee $OUT/gpu_tests_stats_h200_s24.txt
el "spectrum_bench"
timeout 90 python3 -m drope_lens.benchmarks.spectrum_bench --skip-slow --out $OUT/spectrum_bench_h200_s24.json 2>&1 | grep -v Warning
el "waiting for the checkpoint"; wait $CKPT; tail -1 $OUT/checkpoint.log
el "attention_stats_bench"
timeout 240 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --out $OUT/attention_stats_bench_h200_s24.json --lengths 32768 65536 --repeat 3 --agreement-tokens 4096 --sweep 128,64,8,3 128,64,4,3 128,128,8,3 64,64,4,3 128,64,8,2 128,32,4,3 64,128,4,3 2>&1 | grep -v Warning
el end
