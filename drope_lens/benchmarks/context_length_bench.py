"""GPU evidence for Experiment 10 on a Llama-2-7B-shaped random bf16 pair.

    python -m drope_lens.benchmarks.context_length_bench --workdir /tmp/bench --out ctx_bench.json

1. Prefill throughput (tokens/s, median of ``--repeat`` CUDA-event timings, ours and HF run
   alternately after a warm-up of both, see :func:`timed_pair`) of one Exp 10
   prompt (simple format, batch 1) at each length, drope_lens RoPE forward vs Hugging Face
   ``LlamaForCausalLM`` (``attn_implementation="sdpa"``, bf16) on the same token row, both
   returning logits for every position; the ratio is drope_lens / HF (target >= 1.0), with the
   peak GPU memory of each forward. Also the host time of each forward (seconds until the call
   returns, before synchronising: when it is close to the CUDA-event time the forward is
   host-bound). ``--profile FILE`` writes, for the first length, cProfile's top functions (by
   own time) over 10 forwards of each model and torch.profiler's table of one drope_lens forward.
2. The whole grid: ``context_length.run`` on both models (``--n`` trials x lengths x 2 formats,
   verification as ``--verify`` says), wall seconds per model and per cell, peak memory.

Weights are random (timing does not depend on values), so accuracies are meaningless here.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from .random_checkpoint import bench_pair
from .timing import event_seconds

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)


def timed_pair(ours, theirs, repeat: int, warm_s: float = 1.0) -> tuple[float, float, float, float]:
    """Median seconds (CUDA events) of ``ours`` and ``theirs``, run alternately ``repeat`` times each
    after both have run for at least ``warm_s`` seconds (first-use work, and GPU clocks that ramp up
    from idle: measured first and alone, the first length's forward once looked 1.7x slower than
    the next, longer one); and the peak GiB allocated by each."""

    def one(fn) -> float:
        return event_seconds(fn)[0]

    torch.cuda.synchronize()
    begin, warm = time.perf_counter(), 0
    while warm < 3 or time.perf_counter() - begin < warm_s:
        one(ours), one(theirs)
        warm += 1
    times: dict = {ours: [], theirs: []}
    peaks = {}
    for fn in (ours, theirs):
        torch.cuda.reset_peak_memory_stats()
        times[fn].append(one(fn))
        peaks[fn] = torch.cuda.max_memory_allocated() / 2**30
    for _ in range(repeat - 1):
        for fn in (ours, theirs):
            times[fn].append(one(fn))
    return (statistics.median(times[ours]), statistics.median(times[theirs]), peaks[ours], peaks[theirs])


def host_seconds(fn, repeat: int = 10) -> float:
    """Median seconds until ``fn()`` returns (no synchronisation: the host's share of a forward)."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times)


def host_profile(ours, theirs, out: Path, length: int) -> None:
    """cProfile (top 25 by own time, 10 forwards each) and torch.profiler (one forward of ours)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    text = io.StringIO()
    for name, fn in (("drope_lens", ours), ("HF sdpa", theirs)):
        profiler = cProfile.Profile()
        torch.cuda.synchronize()
        profiler.enable()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        profiler.disable()
        text.write(f"=== cProfile, {name}, 10 forwards of {length} tokens ===\n")
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ours()
        torch.cuda.synchronize()
    text.write(f"=== torch.profiler, drope_lens, one forward of {length} tokens ===\n")
    text.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    out.write_text(text.getvalue())


def checkpoints(workdir: Path) -> tuple[Path, Path]:
    """The shared benchmark pair (:func:`random_checkpoint.bench_pair`)."""
    return bench_pair(workdir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("ctx_bench.json"))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--verify", action="store_true", help="include verification/ranking in the grid")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--profile", type=Path, default=None, help="write host profiles of the first length here")
    args = parser.parse_args()

    import drope_lens as dl
    from drope_lens.measurement import passkey
    from drope_lens.experiments import context_length as cl
    from transformers import LlamaForCausalLM

    rope_dir, drope_dir = checkpoints(args.workdir)
    report: dict = {"device": torch.cuda.get_device_name(), "lengths": args.lengths, "prefill": []}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2))

    ours = dl.load_model(rope_dir, dtype=torch.bfloat16, device="cuda")
    hf = LlamaForCausalLM.from_pretrained(rope_dir, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    count = lambda text: len(ours.tokenizer(text)["input_ids"])  # noqa: E731
    for length in args.lengths:
        trial = passkey.make_trial("simple", length, None, 0, 0, count)
        tokens = torch.tensor([ours.tokenizer(trial.prompt)["input_ids"]], device="cuda")
        with torch.inference_mode():
            ours_s, hf_s, ours_gib, hf_gib = timed_pair(lambda: ours(tokens), lambda: hf(tokens).logits, args.repeat)
            ours_host, hf_host = host_seconds(lambda: ours(tokens)), host_seconds(lambda: hf(tokens).logits)
            if args.profile is not None and length == args.lengths[0]:
                host_profile(lambda: ours(tokens), lambda: hf(tokens).logits, args.profile, length)
        row = {"length": length, "tokens": int(tokens.shape[1]), "drope_lens_s": ours_s, "hf_sdpa_s": hf_s,
               "drope_lens_host_s": ours_host, "hf_host_s": hf_host,
               "drope_lens_tok_per_s": tokens.shape[1] / ours_s, "hf_tok_per_s": tokens.shape[1] / hf_s,
               "throughput_ratio": hf_s / ours_s, "drope_lens_peak_gib": ours_gib, "hf_peak_gib": hf_gib}
        report["prefill"].append(row)
        print(f"prefill {length:>6}: drope_lens {row['drope_lens_tok_per_s']:>9.0f} tok/s ({ours_gib:.1f} GiB), "
              f"HF sdpa {row['hf_tok_per_s']:>9.0f} tok/s ({hf_gib:.1f} GiB), ratio {row['throughput_ratio']:.3f}; "
              f"ms per forward {1e3 * ours_s:.1f} vs {1e3 * hf_s:.1f}, host {1e3 * ours_host:.1f} vs {1e3 * hf_host:.1f}",
              flush=True)
        save()
    del hf
    gc.collect()
    torch.cuda.empty_cache()
    if not args.skip_grid:
        report["grid"] = {}
        for name, directory in (("rope", rope_dir), ("drope", drope_dir)):
            model = ours if name == "rope" else dl.load_model(directory, dtype=torch.bfloat16, device="cuda")
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            start = time.perf_counter()
            df = cl.run(model, args.lengths, n=args.n, verify=args.verify, show_progress=False)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            report["grid"][name] = {"seconds": seconds, "cells": int(df.groupby(["length", "format"]).ngroups),
                                    "rows": len(df), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            print(f"grid {name}: {seconds:.1f} s for {len(df)} trials, peak {report['grid'][name]['peak_gib']:.1f} GiB",
                  flush=True)
            del model
            ours = None
            gc.collect()
            torch.cuda.empty_cache()
            save()
        total = sum(v["seconds"] for v in report["grid"].values())
        report["grid_total_seconds"] = total
        print(f"whole grid, both models: {total:.1f} s (target < 300 s)")
    save()


if __name__ == "__main__":
    main()
