#!/bin/bash
# Lead's call 5 (session 30): Exp 4's spectra now solved in place (no copy of the 320 Gram
# matrices). The CUDA tests that reach that path, then Exp 4 in study_bench twice on both models.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests of the spectra, entropies and Exp 4"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short -rfE \
  tests -k "spectrum or entropy or sinks or deferred" 2>&1 | tail -5
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for i in 1 2; do
  el "study_bench Exp 4, both models, run $i"
  timeout 100 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s30_call5_run$i.json \
    --only sinks 2>&1 | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward" \
    | grep "s ->\|HF work\|^ *sinks"
done
el end
