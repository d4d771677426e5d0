#!/bin/bash
# Lead's final GPU call (session 23) on merged main: the CUDA test suite after the layout move, the
# one engine and the new toy pair; the Gram-spectrum methods (incl. householder_fused, never run on a
# GPU before); Exp 10 prefill at 512/1,024 with the alternating warm timing.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" > /tmp/ckpt.log 2>&1) &
CK=$!
el "CUDA tests (nf4 deselected: bitsandbytes is not installed on this machine)"
DROPE_LENS_TEST_DEVICE=cuda timeout 230 python3 -m pytest -q -p no:cacheprovider -k "not nf4" \
  tests/test_experiments.py tests/test_hooks.py tests/test_bundled.py tests/test_generation.py \
  tests/test_attention_stats.py tests/test_spectrum.py tests/test_repr_entropy.py tests/test_generation_engine.py \
  tests/test_measurement_experiments.py tests/test_gpu.py tests/test_fused.py tests/test_context_length.py \
  tests/test_conditions.py 2>&1 | tail -25 | tee $OUT/gpu_tests_h200_s23_final.txt
el "spectrum (all methods incl. householder_fused)"
timeout 45 python3 -m drope_lens.benchmarks.spectrum_bench --skip-slow --out $OUT/spectrum_bench_final.json 2>&1 | grep -v Warning | tee $OUT/spectrum_bench_final.txt
wait $CK; tail -1 /tmp/ckpt.log
el "context_length_bench prefill"
timeout 60 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid --lengths 512 1024 --repeat 7 --out $OUT/context_length_bench_final.json 2>&1 | grep -v -i "warn\|Loading weights" | tee $OUT/context_length_bench_final.txt
el end
