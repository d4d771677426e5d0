#!/bin/bash
# speed helper, GPU call 1
export PYTHONUNBUFFERED=1
rm -rf drope_lens/hooks drope_lens/experiments; cp -r hooks drope_lens/hooks; cp -r experiments drope_lens/experiments; export PYTHONPATH=$PWD:/tmp/site
W=/tmp/bench
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import drope_lens.hooks, drope_lens.experiments; print('import ok')"
el "write checkpoint"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -2
el "gpu tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_attention_stats.py tests/test_generation_engine.py tests/test_repr_entropy.py tests/test_measurement_experiments.py 2>&1 | tee $OUT/gpu_tests_h200.txt | tail -40
el "study_bench"
timeout 130 python3 -m drope_lens.benchmarks.study_bench --workdir $W --out $OUT/study_bench_h200.json --only massive-values disruption sinks bos-write attention-structure layer-balance context-length --lengths 512 1024 2048 --n 20 2>&1 | grep -v Warning | tee $OUT/study_bench_h200.txt
el "attention_stats_bench"
timeout 45 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --out $OUT/attention_stats_bench_h200.json --lengths 32768 --repeat 2 --agreement-tokens 0 2>&1 | grep -v Warning | tee $OUT/attention_stats_bench_h200.txt
el "generation_bench"
timeout 40 python3 -m drope_lens.benchmarks.generation_bench --workdir $W --part generation --repeat 3 --out $OUT/generation_bench_h200.json 2>&1 | grep -v Warning | tail -4 | tee $OUT/generation_bench_h200.txt
el "context_length_bench prefill"
timeout 30 python3 -m drope_lens.benchmarks.context_length_bench --workdir $W --skip-grid --lengths 512 1024 2048 4096 --repeat 3 --out $OUT/context_length_bench_h200.json 2>&1 | grep -v Warning | tee $OUT/context_length_bench_h200.txt
el end
