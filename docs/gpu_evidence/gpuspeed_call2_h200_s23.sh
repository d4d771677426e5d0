#!/bin/bash
# gpuspeed, GPU call 2 (session 23): final evidence. Run from the archive root with PYTHONPATH set.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" > /tmp/ckpt.log 2>&1) &
CK=$!
el "CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_attention_stats.py tests/test_spectrum.py tests/test_repr_entropy.py tests/test_generation_engine.py tests/test_measurement_experiments.py tests/test_gpu.py tests/test_fused.py 2>&1 | tail -12 | tee $OUT/gpu_tests_h200_s23.txt
wait $CK; tail -1 /tmp/ckpt.log
el "spectrum"
timeout 40 python3 -m drope_lens.benchmarks.spectrum_bench --skip-slow --out $OUT/spectrum_bench_call2.json 2>&1 | grep -v Warning
el "attention_stats_bench"
timeout 70 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --out $OUT/attention_stats_bench_h200_s23.json --lengths 32768 --repeat 3 --agreement-tokens 0 2>&1 | grep -v Warning
el "study_bench"
timeout 110 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s23.json --only massive-values disruption sinks bos-write attention-structure layer-balance 2>&1 | grep -v -i "warn\|Loading weights"
el "generation_bench"
timeout 75 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --part all --repeat 3 --sweep-prompts 48 --out $OUT/generation_bench_h200_s23.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ \|^{\|^}'
el "context_length_bench prefill"
timeout 35 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid --lengths 512 1024 2048 4096 --repeat 5 --out $OUT/context_length_bench_h200_s23.json 2>&1 | grep -v -i "warn\|Loading weights"
el end
