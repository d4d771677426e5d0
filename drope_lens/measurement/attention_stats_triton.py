"""Attention statistics on CUDA: flash-attention-style Triton kernels, no ``[T, T]`` matrix.

Computes exactly the statistics of :func:`drope_lens.measurement.attention_stats.attention_stats` (same
definitions, same float32 scores ``(q . k) * scale``; see that module). The kernels live in
:mod:`drope_lens.measurement.attention_stats_kernels`. ``row_kernel`` runs one program per block
of ``block_m`` query rows and (batch, head):

1. it streams over the keys the rows can see, keeping online the running maximum ``m``,
   ``l = sum 2^(s - m)`` and ``a = sum 2^(s - m) (s - m)`` of the scores in log2 units
   (``s = q . k * scale * log2 e``, so ``exp2`` is one instruction); then ``lse = m + log2 l`` and
   the row entropy ``H = ln 2 (log2 l - a / l)`` (nats). Rescaling ``a`` when ``m`` grows is exact
   (``a' = 2^(m - m') (a + (m - m') l)``) and every term is relative to the row maximum, so large
   DroPE scores (|s| ~ 1e4) cost no precision (``lse - sum p s`` in float32 would). Key tiles that
   every row of the block sees whole (all but the causal diagonal, the window edge and padding)
   skip the masks;
2. in the same pass, the key tiles within ``G = max(window, max_distance)`` of its rows also
   gather (``tl.gather``) the score at each distance 0..G-1 of each row into a ``[block_m, G]``
   tensor; once ``lse`` is known these become probabilities ``2^(s - lse)``: distance profile and
   local masses; the sink is ``2^(q . k_0 * scale * log2 e - lse)``;
3. it writes per-program partial sums over its rows t >= 1, summed afterwards in PyTorch
   (deterministic, no atomics).

``received_kernel`` (only when asked) is a second pass, one program per block of keys, summing the
probabilities (from the rows' ``lse``) that every query tile gives its keys into a
``[block_m, block_n]`` accumulator reduced once at the end: each program owns its keys' sums, so
there are no atomic adds and the result is deterministic. Scores are ``tl.dot`` of the inputs in
their own dtype with float32 accumulation (products of bf16/fp16 numbers are exact in float32;
float32 inputs use IEEE float32 products, not TF32). :func:`usable` says when this path applies
(CUDA tensors and Triton, or ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
from jaxtyping import Float, Int

from .attention_stats import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_WINDOW,
    AttentionStats,
    check_parameters,
    key_spans,
)

@dataclass
class KernelConfig:
    """Tile sizes and launch settings of both kernels (the two must share ``block_m``/``block_n``
    and ``num_warps``: the received pass rebuilds the row pass's scores bitwise from the same
    ``[block_m, D] x [D, block_n]`` dot)."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


#: The settings used: the fastest of seven in ``attention_stats_bench --sweep`` on an H200 (one layer
#: of 32 heads x 128 at 32k tokens, all statistics: 20.5 ms; 128x64 with 8 warps 28.4 ms, 64x64 with
#: 4 warps 22.7 ms; docs/gpu_evidence/stats_call1_h200_s24_console.txt).
CONFIG = KernelConfig()
#: The settings for sequences of at most :data:`SHORT_QUERIES` queries: at the study's 10 x 512 one
#: layer's row pass takes 244 us with these against 410 us with :data:`CONFIG` (H200, session 30's
#: profile, docs/gpu_evidence/lead_call{2,3}_h200_s30_console.txt; fastest of ten in the sweep at 10 x 512;
#: with them, session 31's profile: 8.0 ms for the 32 layers, lead_call3_h200_s31_console.txt).
SHORT_CONFIG = KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)
SHORT_QUERIES = 2048


def config_for(n_queries: int) -> KernelConfig:
    """The kernel settings used for sequences of ``n_queries`` queries."""
    return SHORT_CONFIG if n_queries <= SHORT_QUERIES else CONFIG


NO_WINDOW = 2**62
#: Triton's floating-point contraction (``a * b + c`` as one FMA). Off: the received pass must
#: rebuild each score bitwise as the row pass made it (``p = exp(s - lse)`` with the row's own
#: ``lse``); a contracted ``dot * scale - lse`` in one kernel and a rounded ``dot * scale`` in the
#: other differ by up to half an ulp of |s| (5e-4 at |s| ~ 1e4), i.e. that much relative error in
#: every near-one-hot row's probability, summed over rows by ``received``.
FP_FUSION = False


@functools.lru_cache(maxsize=None)
def _kernels() -> Optional[SimpleNamespace]:
    try:
        import triton

        from . import attention_stats_kernels as kernels
    except Exception:  # no triton (CPU builds of torch), or a broken install
        return None
    return SimpleNamespace(triton=triton, rows=kernels.row_kernel, received=kernels.received_kernel)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def usable(*tensors: torch.Tensor) -> bool:
    """True when Triton is importable and the tensors are CUDA (or the interpreter is on) floats."""
    if not (_interpreting() or all(t.is_cuda for t in tensors)):
        return False
    if any(t.dtype not in (torch.float16, torch.bfloat16, torch.float32) for t in tensors):
        return False
    return _kernels() is not None


def attention_stats(
    q: Float[torch.Tensor, "batch q_pos head d_head"],
    k: Float[torch.Tensor, "batch k_pos kv_head d_head"],
    scale: float,
    *,
    attention_mask: Optional[Int[torch.Tensor, "batch k_pos"]] = None,
    window: int = DEFAULT_WINDOW,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    received: bool = False,
    sliding_window: Optional[int] = None,
) -> AttentionStats:
    """Same result as :func:`drope_lens.measurement.attention_stats.attention_stats`, with the Triton kernels.

    Memory beyond q and k: ``O(batch * heads * q_pos)`` float32 (row log-sum-exps) plus, with
    ``received``, the ``[batch, head, key]`` sums.
    """
    check_parameters(window, max_distance)
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("drope_lens.measurement.attention_stats_triton needs Triton; use drope_lens.measurement.attention_stats.")
    batch, n_q, n_heads, d_head = q.shape
    n_k, n_kv = k.shape[1], k.shape[2]
    if k.shape[0] != batch or k.shape[3] != d_head or n_heads % n_kv or n_k < n_q:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit [batch, pos, head, d_head].")
    if k.dtype != q.dtype:
        k = k.to(q.dtype)
    start, end = key_spans(attention_mask, batch, n_k, q.device)
    offset, n_gather = n_k - n_q, max(window, max_distance)
    g_pad = max(16, kernels.triton.next_power_of_2(n_gather))
    config = config_for(n_q)
    n_blocks = kernels.triton.cdiv(n_q, config.block_m)
    grid = (n_blocks, batch * n_heads)
    lse = torch.empty(batch, n_heads, n_q, dtype=torch.float32, device=q.device)
    partial = torch.empty(batch, n_heads, n_blocks, 4 + g_pad, dtype=torch.float32, device=q.device)
    d_pad = max(16, kernels.triton.next_power_of_2(d_head))
    common = dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, D_HEAD=d_pad, EVEN_D=d_pad == d_head,
                  IEEE=q.dtype == torch.float32, num_warps=config.num_warps,
                  **({} if _interpreting() else {"enable_fp_fusion": FP_FUSION, "num_stages": config.num_stages}))
    sliding = NO_WINDOW if sliding_window is None else int(sliding_window)
    c = float(scale) * math.log2(math.e)  # scores in log2 units: exp2 instead of exp
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        kernels.rows[grid](q, k, start, end, lse, partial, *q.stride(), *k.stride(), n_q, n_k, offset, n_heads,
                           n_heads // n_kv, d_head, c, sliding, window, n_gather, G_PAD=g_pad, **common)
        got = None
        if received:
            got = torch.empty(batch, n_heads, n_k, dtype=torch.float32, device=q.device)  # every key is written
            key_grid = (kernels.triton.cdiv(n_k, config.block_n), batch * n_heads)
            kernels.received[key_grid](q, k, start, end, lse, got, *q.stride(), *k.stride(), n_q, n_k, offset,
                                       n_heads, n_heads // n_kv, d_head, c, sliding, **common)
    sums = partial.sum(dim=2)  # [batch, head, 4 + G_PAD]
    rows = torch.arange(offset, n_k, device=q.device)
    n_rows = ((rows[None] >= start[:, None] + 1) & (rows[None] < end[:, None])).sum(dim=1)
    den = n_rows.clamp(min=1).float()[:, None]
    return AttentionStats(
        sink_score=sums[..., 0] / den, entropy=sums[..., 1] / den, local_mass=sums[..., 2] / den,
        local_mass_no_bos=sums[..., 3] / den, distance=sums[..., 4 : 4 + max_distance] / den[..., None],
        n_queries=n_rows, received=got,
    )

