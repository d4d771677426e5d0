#!/bin/bash
# Lead's call 2 (session 32): norms once per tensor, the row kernel's band in its online pass, the
# bisection's float32 stage, the tokenizer. CUDA tests of what changed; the bisection with and
# without its float32 stage side by side; row 1 with its profile and phase timeline; 32k / 64k.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of what changed"
DROPE_LENS_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short -rfE \
  tests/test_spectrum.py tests/test_spectrum_two_stage.py tests/test_repr_entropy.py tests/test_attention_stats.py \
  tests/test_attention_kernels.py tests/test_hooks.py tests/test_measurement_experiments.py tests/test_experiments.py 2>&1 | tail -4
el "bisection: float32 stage on / off, 320 tridiagonal matrices of the study's Grams"
timeout 120 python3 - <<'PY'
import torch
from drope_lens.benchmarks.spectrum_bench import grams, cuda_median
from drope_lens.measurement import spectrum, spectrum_two_stage as ts
from drope_lens.measurement.entropy import entropies_from_spectrum, entropies_from_gram
a = grams(320, 512, 4096)
want = entropies_from_gram(a.cpu(), 512, 4096)
d, e = ts.tridiagonalize_two_stage(a)
for rnd in range(2):
    for h in (0, 22):
        spectrum.FLOAT32_HALVINGS = h
        t, eig = cuda_median(lambda: spectrum.tridiagonal_eigenvalues(d, e), 7)
        err = max(float((g.cpu() - w).abs().max()) for g, w in zip(entropies_from_spectrum(eig, 512, 4096), want))
        print(f"round {rnd}: float32 halvings {h:2d}: bisection {t*1e3:.2f} ms (median of 7), max |entropy error| {err:.1e}", flush=True)
spectrum.FLOAT32_HALVINGS = 22
PY
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 + profile + phases, drope"
timeout 200 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --profile --phases \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s32_call2.json 2>&1 | grep -v -i "warn\|forward_call" | cut -c1-170
el "attention_stats_bench 32k / 64k"
timeout 200 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 32768 65536 \
  --agreement-tokens 0 --repeat 3 --out $OUT/attention_stats_h200_s32_long.json 2>&1 | grep -v -i "warn\|Loading weights"
el end
