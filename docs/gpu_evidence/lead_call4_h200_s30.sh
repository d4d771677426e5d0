#!/bin/bash
# Lead's call 4 (session 30): the whole CUDA suite at this session's head (two_stage the default
# spectra, bulge chase, host-side changes of measure()); row 1 once more; the attention-statistics
# experiments (Exp 4, 5, 7, 8-9) in study_bench on both models.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -n 6 \
  --ignore=tests/test_notebook.py --tb=line -rfE tests 2>&1 | tail -8
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1"
timeout 60 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir bench_out/stats --lengths 4096 \
  --agreement-tokens 0 --repeat 5 --out $OUT/attention_stats_h200_s30_call4.json 2>&1 \
  | grep -v -i "warn\|Loading weights" | grep "Exp 4\|tokens:"
el "study_bench Exp 4, 5, 7, 8-9, both models"
timeout 150 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s30_call4_stats.json \
  --only sinks bos-write attention-structure layer-balance 2>&1 \
  | grep -v -i "warn\|Loading weights\|forward_call\|return .*run(\|return self._forward" \
  | grep "s ->\|HF work\|^ *sinks\|^ *attention\|^ *bos\|^ *layer"
el end
