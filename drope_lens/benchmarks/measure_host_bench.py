"""Host time after the forward of the study's measurement engine (Exp 4+5+7+8-9), CPU.

A model with Llama-2-7B's layer and head counts but tiny widths (32 layers, 32 heads, d_model 256,
d_mlp 512, vocab 32,000; random weights written once under --workdir, float32 on the CPU) and 10
builtin texts x 512 tokens, one batch. One real hooked forward (all four measurements) records
what every capture hook stored; each timed ``measure`` call then replaces the model's ``forward``
(what the engine calls under its hooks) by filling the fresh capture dicts with those values, so only the work after the forward (host copy,
frames, per-text split, concatenation) is repeated. Printed: per measurement alone and all four
together, the median and minimum over ``--repeat`` calls of the wall time from the (replayed)
forward's return to ``measure``'s return, in ms.

    python -m drope_lens.benchmarks.measure_host_bench [--repeat 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/measure_host_bench"))
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    import drope_lens as dl
    from drope_lens.engine import measure as engine
    from drope_lens.experiments import attention_structure, bos_write, layer_balance, sinks
    from drope_lens.measurement.texts import builtin_texts

    from .random_checkpoint import LlamaShape, write_random_checkpoint, write_tokenizer

    torch.set_num_threads(1)
    shape = LlamaShape(n_layers=32, d_model=256, n_heads=32, n_kv_heads=32, d_mlp=512, vocab=32000)
    directory = args.workdir / "drope-7b-layout"
    if not (directory / "config.json").exists():
        write_random_checkpoint(directory, shape, device="cpu")
    if not (directory / "tokenizer.json").exists():
        write_tokenizer(directory, [t.text for t in builtin_texts()], vocab_size=8000)
    model = dl.load_model(directory, dtype="float32", device="cpu", variant="drope", n_ctx=shape.max_position_embeddings)
    texts = builtin_texts()[:10]

    current: dict = {}
    stats_stores: list = []

    def recording(m):
        def hooks(model, captured, m=m):
            current[m.name] = captured
            return m.hooks(model, captured)
        return dataclasses.replace(m, hooks=hooks)

    original_stats = engine.capture_attention_stats

    def capture_stats(store, *a, **k):
        stats_stores.append(store)
        return original_stats(store, *a, **k)

    engine.capture_attention_stats = capture_stats
    parts = {m.name: recording(m) for m in (
        sinks.measurement(sinks.SinksConfig()), bos_write.measurement(bos_write.BosWriteConfig()),
        attention_structure.measurement(attention_structure.AttentionStructureConfig()),
        layer_balance.measurement(layer_balance.LayerBalanceConfig()))}
    start = time.perf_counter()
    engine.measure(model, texts, list(parts.values()), max_tokens=512, batch_size=10, show_progress=False)
    print(f"one real forward with all four measurements: {time.perf_counter() - start:.1f} s", flush=True)
    saved = {name: dict(captured) for name, captured in current.items()}
    saved_stats = dict(stats_stores[-1])
    forward_end = [0.0]

    def replay(*a, **k):
        for name, captured in current.items():
            captured.update(saved[name])
        for store in stats_stores:
            store.update(saved_stats)
        forward_end[0] = time.perf_counter()

    model.forward = replay  # the engine's hooked forward (an instance attribute shadows the method)
    sets = {name: [m] for name, m in parts.items()} | {"all four": list(parts.values())}
    for label, chosen in sets.items():
        host = []
        for r in range(args.repeat + 2):  # two warm-up calls
            current.clear()
            stats_stores.clear()
            engine.measure(model, texts, chosen, max_tokens=512, batch_size=10, show_progress=False)
            if r >= 2:
                host.append((time.perf_counter() - forward_end[0]) * 1e3)
        print(f"{label:<20} post-forward host {statistics.median(host):6.1f} ms (median of {len(host)}, "
              f"min {min(host):.1f})", flush=True)
    engine.capture_attention_stats = original_stats


if __name__ == "__main__":
    main()
