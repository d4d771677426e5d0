#!/bin/bash
# Lead's call 1 (session 34): the bisection's Sturm counts with the pivots' reciprocals approximated
# and refined (spectrum.FAST_RECIPROCAL) against IEEE division; the Gram matrices written into one
# buffer (no torch.cat); the changed modules' CUDA tests; the tokenizer on this host; row 1 side by
# side (--compare) and as always, with the phase timeline.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
el "CUDA tests of the changed modules"
DROPE_LENS_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=short -rfE \
  tests/test_spectrum.py tests/test_spectrum_two_stage.py tests/test_repr_entropy.py \
  tests/test_measurement_experiments.py tests/test_attention_stats.py 2>&1 | tail -15
el "spectrum_bench: default (FAST_RECIPROCAL) and IEEE division, 320 matrices of 512, medians of 9"
timeout 120 python3 -m drope_lens.benchmarks.spectrum_bench --only-two-stage --repeat 9 \
  --settings "spectrum.FAST_RECIPROCAL=False" default "spectrum.FAST_RECIPROCAL=False" \
  --out $OUT/spectrum_bench_h200_s34_call1.json 2>&1 | grep -v -i warn
el "bench pair"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "tokenizer on this host: the study's 10 texts, as tokenize() cuts them"
timeout 60 python3 - <<PY 2>&1 | grep -v -i warn
import os, statistics, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from transformers import AutoTokenizer
from drope_lens.measurement.texts import builtin_texts
from drope_lens.measurement import tokens
tok = AutoTokenizer.from_pretrained("$W/rope_massive") if Path("$W/rope_massive").exists() else None
print("cpus", os.cpu_count(), "tokenizer", type(tok).__name__)
texts = [t.text for t in builtin_texts()[:10]]
prefixes = [tokens._whitespace_prefix(t, 700 * 6) for t in texts]
backend = tok._tokenizer
def med(f, n=30):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
pool = ThreadPoolExecutor(10)
print(f"  encode_batch_fast 10 prefixes: {med(lambda: backend.encode_batch_fast(prefixes)):.2f} ms")
print(f"  encode one by one: {med(lambda: [backend.encode(p) for p in prefixes]):.2f} ms")
print(f"  encode in 10 threads: {med(lambda: list(pool.map(backend.encode, prefixes))):.2f} ms")
print(f"  one prefix: {med(lambda: backend.encode(prefixes[0])):.2f} ms, chars {[len(p) for p in prefixes]}")
PY

el "attention_stats_bench --compare: default vs IEEE division, 7 interleaved rounds"
timeout 150 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --repeat 7 --lengths 4096 \
  --agreement-tokens 0 --compare default "spectrum.FAST_RECIPROCAL=False" \
  --out $OUT/attention_stats_h200_s34_call1_compare.json 2>&1 | grep -v -i "warn\|forward_call"
el "attention_stats_bench row 1 + phases, drope"
timeout 90 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --phases --repeat 5 \
  --lengths 4096 --agreement-tokens 0 --out $OUT/attention_stats_h200_s34_call1.json 2>&1 \
  | grep -v -i "warn\|forward_call"
el end
