#!/bin/bash
# Lead's final GPU call (session 24) on merged main (gen + stats + host): the CUDA tests of the
# changed GPU code (CUDA-graph decoding and graph-safe hooks, direct Triton launches and hook-point
# fast path, statistics kernels, spectrum), then the issue-19 rows that were not re-timed on the
# merged code: generation 8x256->32 (plain and l1_both_bos) and the Exp 3 sweep on an evenly spaced
# quarter of its prompts (105 x 3 conditions), the study-size statistics part, Exp 10 prefill.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" > /tmp/ckpt.log 2>&1) &
CK=$!
el "CUDA tests (nf4: gpu_tests_nf4_h200_s24.txt, bitsandbytes does not fit this transfer)"
DROPE_LENS_TEST_DEVICE=cuda timeout 110 python3 -m pytest -q -p no:cacheprovider -k "not nf4" \
  tests/test_generation_static.py tests/test_generation.py tests/test_generation_engine.py tests/test_hook_points.py \
  tests/test_fused.py tests/test_block.py tests/test_hooks.py tests/test_conditions.py tests/test_attention_stats.py \
  tests/test_spectrum.py tests/test_repr_entropy.py tests/test_study_bench.py tests/test_gpu.py 2>&1 | tail -15 \
  | tee $OUT/gpu_tests_h200_s24_final.txt
wait $CK; tail -1 /tmp/ckpt.log
el "generation_bench: generation (repeat 3) + Exp 3 sweep on 105 of 420 prompts"
timeout 150 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --repeat 3 --sweep-prompts 105 \
  --out $OUT/generation_bench_h200_s24_final.json 2>&1 | grep -v -i "warn\|Loading weights"
el "attention_stats_bench: study part (10 x 512, Exp 4+5+7+8-9)"
timeout 60 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --lengths 4096 --agreement-tokens 0 \
  --repeat 5 --out $OUT/attention_stats_bench_h200_s24_final.json 2>&1 | grep -v -i "warn\|Loading weights"
el "context_length_bench prefill 512 / 1,024"
timeout 55 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid --lengths 512 1024 \
  --repeat 7 --out $OUT/context_length_bench_h200_s24_final.json 2>&1 | grep -v -i "warn\|Loading weights"
el end
