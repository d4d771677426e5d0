"""Latency of the first forwards after loading (GPU): Triton compiles the fused kernels on first use.

    TRITON_CACHE_DIR=$(mktemp -d) python -m drope_lens.benchmarks.first_forward   # cold cache
    python -m drope_lens.benchmarks.first_forward                                # warm cache

Prints wall seconds (CUDA synchronised) of the first three forwards of the bundled toy RoPE model
in bf16 on 2 x 64 tokens, then of one KV-cache generation of 8 tokens.
"""

from __future__ import annotations

import json
import time

import torch


def main() -> None:
    import drope_lens as dl

    model = dl.load_model("bundled:toy/rope", dtype="bf16", device="cuda")
    tokens = torch.randint(3, 3000, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    seconds = []
    with torch.inference_mode():
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(tokens)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.generate(tokens[:1], max_new_tokens=8, use_past_kv_cache=True, verbose=False, do_sample=False)
        torch.cuda.synchronize()
        generate = time.perf_counter() - start
    print(json.dumps({"forward_seconds": seconds, "generate_8_tokens_seconds": generate}))


if __name__ == "__main__":
    main()
