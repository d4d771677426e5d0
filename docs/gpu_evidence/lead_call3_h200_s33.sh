#!/bin/bash
# Lead's call 3 (session 33), at the session's final GPU code (Gram in 2 blocks; the early solve and
# the stream chunks taken back): the whole CUDA suite; row 1 as always, twice (5 runs each, with its
# phase timeline); Exp 4, 5, 7, 8-9 in study_bench, both models, 5 runs each (median).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "whole CUDA suite"
DROPE_LENS_TEST_DEVICE=cuda timeout 280 python3 -m pytest -q -p no:cacheprovider -n 6 --ignore=tests/test_notebook.py \
  --tb=line -rfE tests 2>&1 | tail -3
el "gram_matrix alone: 32 x [10, 512, 4096] bf16, blocks 1 / 2 / 4, 15 interleaved rounds (CUDA events)"
timeout 60 python3 - <<'PY' 2>&1 | grep -v -i warn
import statistics, torch
from drope_lens.measurement import entropy
from drope_lens.benchmarks.timing import event_seconds
g = torch.Generator(device="cuda").manual_seed(0)
xs = [torch.randn(10, 512, 4096, device="cuda", generator=g).bfloat16() for _ in range(32)]
def all_layers():
    return [entropy.gram_matrix(x) for x in xs]
times = {k: [] for k in (1, 2, 4)}
for round_ in range(16):
    for k in times:
        entropy.GRAM_BLOCKS = k
        t = event_seconds(all_layers)[0]
        if round_:
            times[k].append(t)
full = None
for k in times:
    entropy.GRAM_BLOCKS = k
    got = torch.stack(all_layers()[:2])
    full = got if full is None else full
    err = ((got - full).abs().max() / full.abs().max()).item()
    print(f"  GRAM_BLOCKS={k}: {statistics.median(times[k]) * 1e3:.2f} ms for 32 layers (median of 15), "
          f"max |difference| to 1 block / max {err:.1e}", flush=True)
PY
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
for k in 1 2; do
  el "attention_stats_bench row 1 + phases, drope, run $k"
  timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
    --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s33_call3_run$k.json 2>&1 \
    | grep -v -i "warn\|forward_call\|call [0-9]: "
done
el "study_bench Exp 4, 5, 7, 8-9, both models, 5 runs each"
timeout 150 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s33_call3_stats.json \
  --only sinks bos-write attention-structure layer-balance --repeat 5 2>&1 | grep "^ *sinks\|^ *bos-write\|^ *attention-structure\|^ *layer-balance"
el end
