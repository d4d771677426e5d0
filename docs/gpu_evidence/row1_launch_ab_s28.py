"""Session 28: issue 19's row 1 (Exp 4+5+7+8-9 at 10 x 512 against a bare forward) with the
one-launch tridiagonalisation's default launch (strips of 4,096 elements, 4 warps) and the
fastest of spectrum_bench's sweep (2,048 elements, 2 warps), alternated in one process on one
model (A B A B), each a median of 5 (attention_stats_bench.study_size)."""
import json
import os
import sys
from pathlib import Path

import drope_lens as dl
from drope_lens.benchmarks.attention_stats_bench import study_size
from drope_lens.benchmarks.random_checkpoint import bench_pair
from drope_lens.measurement import spectrum_persistent as sp
from drope_lens.measurement.texts import builtin_texts

directory = bench_pair(Path(sys.argv[1]))[0]
model = dl.load_model(directory, dtype="bf16", device="cuda", variant="drope")
texts = builtin_texts()[:10]
rows = []
for setting in [(4096, 4), (2048, 2), (4096, 4), (2048, 2)]:
    sp.STRIP_ELEMENTS, sp.WARPS = setting
    print(f"strip {setting[0]}, {setting[1]} warps:", flush=True)
    rows.append({"strip_elements": setting[0], "warps": setting[1], **study_size(model, texts, 5)})
Path(os.environ["OUT"], "row1_launch_ab_h200_s28.json").write_text(json.dumps(rows, indent=2))
