#!/bin/bash
# Lead's call 2 (session 31): after whole frames without a store, entropies filled last, the
# short-sequence kernel settings, blocked Gram matrices and 53 halvings. CUDA tests of what changed;
# row 1 with its phase timeline (and garbage collections); the kernel settings at 2k and 4k;
# Exp 4, 5, 7, 8-9 in study_bench, both models, 5 runs each (median).
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import pandas, numpy, transformers; print('pandas', pandas.__version__, 'numpy', numpy.__version__, 'transformers', transformers.__version__)"
el "CUDA tests of what changed"
DROPE_LENS_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short -rfE \
  tests/test_spectrum.py tests/test_spectrum_two_stage.py tests/test_repr_entropy.py tests/test_attention_stats.py \
  tests/test_measurement_experiments.py 2>&1 | tail -4
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench row 1 + phases, drope"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s31_call2.json 2>&1 | grep -v -i "warn\|forward_call"
el "kernel settings at 1 x 2048 and 1 x 4096 (row pass / all)"
timeout 100 python3 -c "
from drope_lens.benchmarks.attention_stats_bench import sweep
for length in (2048, 4096):
    sweep(['64,64,4,2', '128,64,4,3', '64,64,4,3'], length=length, batch=1)
" 2>&1 | grep sweep
el "study_bench Exp 4, 5, 7, 8-9, both models, 5 runs each"
timeout 200 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200_s31_call2_stats.json \
  --only sinks bos-write attention-structure layer-balance --repeat 5 2>&1 | grep "s ->\|HF work\|^ *sinks\|^ *bos-write\|^ *attention-structure\|^ *layer-balance"
python3 -c "
import json; r = json.load(open('$OUT/study_bench_h200_s31_call2_stats.json'))
for e in r['experiments']: print(e['experiment'], e['variant'], [round(x, 4) for x in e.get('seconds_each_run', [])])"
el end
