#!/bin/bash
# gen, GPU call 2 (session 24): CUDA tests only (no checkpoint, no benchmark: 100 s of device time
# left): static / CUDA-graph decoding with and without Exp 3's graph-safe hooks, hooks during generation.
set -o pipefail
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start
DROPE_LENS_TEST_DEVICE=cuda timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_generation_static.py tests/test_hooks.py 2>&1 | tail -15
el end
