#!/bin/bash
# helper "stats", GPU call 3 (session 24): CUDA tests of the spectrum with its new default
# (householder_fused, 8 x 512 update tiles, CUDA graph) and one timing of that default.
set -o pipefail
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el "CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_spectrum.py tests/test_repr_entropy.py 2>&1 | tail -5
el "default symmetric_eigenvalues, 320 x 512 x 512"
timeout 40 python3 - <<'PY' 2>&1 | grep -v Warning
import torch
from drope_lens.benchmarks.spectrum_bench import grams, cuda_median
from drope_lens.measurement import spectrum
from drope_lens.measurement.entropy import entropies_from_spectrum
a = grams(320, 512, 4096)
t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a), 5)
want = entropies_from_spectrum(torch.linalg.eigvalsh(a), 512, 4096)
err = max(float((g - w).abs().max()) for g, w in zip(entropies_from_spectrum(eig, 512, 4096), want))
print(f"default (auto -> householder_fused, tiles {spectrum.UPDATE_ROWS}x{spectrum.UPDATE_COLUMNS}, graph {spectrum.GRAPH}): "
      f"{t * 1e3:.1f} ms for 320 matrices; max |entropy - cuSOLVER eigvalsh entropy| {err:.1e}")
PY
el end
