#!/bin/bash
# Lead's call 1 (session 27): first GPU run of cusolverDnXsyevBatched (spectrum_cusolver, written in
# session 26): its timing and entropy error next to householder_persistent (the default), its test
# against LAPACK, then row 1 of issue 19 (Exp 4+5+7+8-9, 10 x 512) with the default spectrum method
# and with cusolver_batched, side by side.
set -o pipefail
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "
import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)
from drope_lens.measurement import spectrum_cusolver as c
print('cusolverDnXsyevBatched available:', c.available(), c._loaded_path())"
el "spectrum_bench --quick"
timeout 150 python3 -m drope_lens.benchmarks.spectrum_bench --quick --repeat 5 --out $OUT/spectrum_bench_h200_s27.json 2>&1 | grep -v -i warn
el "test_spectrum on CUDA"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_spectrum.py 2>&1 | tail -5
for m in default cusolver_batched; do
  el "attention_stats_bench, spectrum method $m"
  extra=""; [ $m != default ] && extra="--spectrum-method $m"
  timeout 170 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 4096 \
    --agreement-tokens 0 --repeat 5 $extra --out $OUT/attention_stats_h200_s27_$m.json 2>&1 | grep -v -i "warn\|Loading weights"
done
el end
