#!/bin/bash
# Lead's call 4 (session 25): spectrum methods side by side (one-launch, blocked panels, fused per
# column) on 320 x 512 x 512, then the Exp 3 sweep on ALL 420 prompts x 3 conditions on this code
# (generation is untouched since; the session-24 record was a 105-prompt subset), + generation 8x256->32.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" > /tmp/ckpt.log 2>&1) &
CK=$!
el "spectrum_bench --quick --blocked-panels 16 32 64"
timeout 80 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 --blocked-panels 16 32 64 \
  --out $OUT/spectrum_bench_h200_s25_call4.json 2>&1 | grep -v -i warn
wait $CK; tail -1 /tmp/ckpt.log
el "generation_bench: generation (repeat 3) + Exp 3 sweep on all 420 prompts x 3 conditions"
timeout 330 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --repeat 3 \
  --out $OUT/generation_bench_h200_s25_full_sweep.json 2>&1 | grep -v -i "warn\|Loading weights" | grep -v '^ *"\|^{\|^ *}'
el end
