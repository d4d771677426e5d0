"""CUDA-event timing shared by the GPU benchmarks."""

from __future__ import annotations

import statistics

import torch


def event_seconds(fn) -> tuple[float, object]:
    """Seconds of GPU time between CUDA events recorded before and after ``fn()`` (synchronised at
    the end), and its result."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    result = fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3, result


def cuda_median(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``fn`` over ``repeat`` runs, timed with CUDA events, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        torch.cuda.synchronize()
        seconds, result = event_seconds(fn)
        times.append(seconds)
    return statistics.median(times), result
