#!/bin/bash
# gpuspeed, GPU call 1 (session 23): options for the Gram spectra, Triton FMA contraction A/B,
# CUDA tests of the changed modules, attention statistics bench (study size, 32k, 64k),
# profiles of greedy decoding and short prefill. Run from the archive root with PYTHONPATH set.
set -o pipefail
W=/tmp/bench; T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
el start; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
el "spectrum options"
timeout 90 python3 -m drope_lens.benchmarks.spectrum_bench --out $OUT/spectrum_bench_h200_s23.json 2>&1 | grep -v Warning
el "FMA contraction A/B, one layer's statistics at 32k"
timeout 60 python3 - <<'PY' 2>&1 | grep -v Warning
import torch, statistics
from drope_lens import attention_stats_triton as t
q = torch.randn(1, 32768, 32, 128, device="cuda", dtype=torch.bfloat16); k = torch.randn_like(q)
for fusion in (True, False, True, False):
    t.FP_FUSION = fusion
    f = lambda: t.attention_stats(q, k, 128**-0.5, received=True)
    f(); torch.cuda.synchronize(); ts = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    print(f"fp_fusion={fusion}: one layer, 32k, received: {statistics.median(ts):.2f} ms")
PY
el "CUDA tests"
DROPE_LENS_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_attention_stats.py tests/test_spectrum.py tests/test_repr_entropy.py tests/test_generation_engine.py 2>&1 | tail -15 | tee $OUT/gpu_tests_call1.txt
el "write checkpoint"
python3 -c "
from pathlib import Path
from drope_lens.benchmarks.random_checkpoint import bench_pair
print(bench_pair(Path('$W')))" 2>&1 | tail -1
el "attention_stats_bench"
timeout 100 python3 -m drope_lens.benchmarks.attention_stats_bench --workdir $W --out $OUT/attention_stats_bench_call1.json --lengths 32768 65536 --repeat 2 --agreement-tokens 0 2>&1 | grep -v Warning
el "profiles"
timeout 60 python3 - <<'PY' 2>&1 | grep -v Warning | tee $OUT/profiles_call1.txt
import cProfile, pstats, torch, drope_lens as dl
from drope_lens.benchmarks.random_checkpoint import bench_pair
from pathlib import Path
from drope_lens.generation import greedy_generate
model = dl.load_model(bench_pair(Path("/tmp/bench"))[0], dtype="bf16", device="cuda")
rows = torch.randint(3, 7000, (8, 256)); rows[:, 0] = 1; prompts = rows.tolist()
greedy_generate(model, prompts, 32, batch_size=8); torch.cuda.synchronize()
pr = cProfile.Profile(); pr.enable(); greedy_generate(model, prompts, 32, batch_size=8); torch.cuda.synchronize(); pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(22)
from torch.profiler import profile, ProfilerActivity
x = torch.randint(3, 7000, (1, 512), device="cuda")
with torch.inference_mode():
    for _ in range(3): model(x, return_type="logits")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model(x, return_type="logits"); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))
PY
el end
