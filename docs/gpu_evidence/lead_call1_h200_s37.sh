#!/bin/bash
# Lead's call 1 (session 37), at cd5f065 (the code of session 36's close, whose last commit, triton.cdiv grid sizing,
# never ran on CUDA): the whole CUDA suite; row 1 twice (5 runs each, with its phase timeline); greedy
# generation vs HF generate; Exp 10 prefill vs HF sdpa. The bench pair goes under bench_out/ (git-ignored,
# kept on a warm machine for calls 2-3).
set -o pipefail
W=bench_out/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el "start at cd5f065"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import triton, torch, transformers; print('triton', triton.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 260 python3 -m pytest -q -p no:cacheprovider -n 8 --ignore=tests/test_notebook.py \
  --tb=short -rfE tests 2>&1 | tail -6
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s37_call1_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call" | grep -v "rows \|_with_head\|garbage"
done
el "generation_bench: generation (repeat 3)"
timeout 120 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --part generation --repeat 3 \
  --out $OUT/generation_bench_h200_s37.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ *"\|^{\|^ *}'
el "context_length_bench prefill"
timeout 100 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid \
  --lengths 512 1024 2048 4096 8192 16384 --repeat 5 --out $OUT/context_length_bench_h200_s37.json 2>&1 \
  | grep -v -i "warn\|Loading weights"
el end
