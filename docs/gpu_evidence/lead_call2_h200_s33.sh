#!/bin/bash
# Lead's call 2 (session 33): CUDA tests of the Gram blocks and the spectra on prioritised streams;
# the two-stage spectra in 1-4 stream chunks side by side, and the stages' times for 80/160/320
# matrices (does the bulge chase scale with the count?); row 1 under Gram blocks 1/2/4/8 and stream
# chunks 1-4 side by side (default twice: first and last), then row 1 as always and its phases.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA tests: entropy, spectra, measurement experiments"
DROPE_LENS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short -rfE \
  tests/test_repr_entropy.py tests/test_spectrum.py tests/test_spectrum_two_stage.py tests/test_measurement_experiments.py 2>&1 | tail -4
el "spectrum_bench: stream chunks 1-4 (9 interleaved rounds), stages at 320 matrices"
timeout 120 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 --stream-chunks 1 2 3 4 \
  --out $OUT/spectrum_bench_h200_s33_call2_320.json 2>&1 | grep -v -i "warn"
for m in 160 80; do
  el "spectrum_bench stages at $m matrices"
  timeout 60 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 --matrices $m \
    --out $OUT/spectrum_bench_h200_s33_call2_$m.json 2>&1 | grep -v -i "warn"
done
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "row 1 compared side by side (9 rounds), then as always (5 runs) + phases"
timeout 240 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 9 --phases \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s33_call2.json --compare \
  default "entropy.GRAM_BLOCKS=1" "entropy.GRAM_BLOCKS=4" "entropy.GRAM_BLOCKS=8" \
  "spectrum.STREAM_CHUNKS=2" "spectrum.STREAM_CHUNKS=3" "spectrum.STREAM_CHUNKS=4" \
  "entropy.GRAM_BLOCKS=4;spectrum.STREAM_CHUNKS=2" default \
  2>&1 | grep -v -i "warn\|forward_call\|call [0-9]: "
el end
