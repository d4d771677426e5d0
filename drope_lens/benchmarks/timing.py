"""Timing shared by the GPU benchmarks (generation_bench, knowledge_bench)."""

from __future__ import annotations

import statistics

import torch


def cuda_median(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``fn`` over ``repeat`` runs, timed with CUDA events, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), result
