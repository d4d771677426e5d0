#!/bin/bash
# Lead's call 3 (session 31): the side-stream test on CUDA; where row 1's GPU time goes now
# (torch.profiler kernel table of one warm study-size measure call) with the phase timeline; then
# row 1 with Exp 4's spectra solved on a side stream every 8 and every 16 layers during the forward.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "CUDA test: side-stream entropies"
DROPE_LENS_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE \
  tests/test_repr_entropy.py 2>&1 | tail -3
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 + profile + phases, drope"
timeout 200 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --profile \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s31_call3.json 2>&1 | grep -v -i "warn\|forward_call" \
  | cut -c1-70,100-240
for n in 8 16; do
  el "row 1 + phases, spectra on a side stream every $n layers"
  timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --overlap-layers $n \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s31_call3_overlap$n.json 2>&1 \
    | grep -v -i "warn\|forward_call" | grep -v "rows\|_with_head"
done
el end
