"""Attention statistics on CUDA: flash-attention-style Triton kernels, no ``[T, T]`` matrix.

Computes exactly the statistics of :func:`drope_lens.measurement.attention_stats.attention_stats` (same
definitions, same float32 scores ``(q . k) * scale``; see that module). ``row_kernel`` runs one
program per block of ``BLOCK_M`` query rows and (batch, head):

1. it streams over the keys the rows can see, keeping online the running maximum ``m``,
   ``l = sum exp(s - m)`` and ``a = sum exp(s - m) (s - m)``; then ``lse = m + ln l`` and the row
   entropy ``H = ln l - a / l`` (nats). Rescaling ``a`` when ``m`` grows is exact
   (``a' = e^(m - m') (a + (m - m') l)``) and every term is relative to the row maximum, so large
   DroPE scores (|s| ~ 1e4) cost no precision (``lse - sum p s`` in float32 would);
2. it revisits only the key tiles within ``G = max(window, max_distance)`` of its rows, turns
   their scores into probabilities with the row's ``lse`` and gathers (``tl.gather``) the
   probability at each distance 0..G-1: distance profile and local masses; the sink is
   ``exp(q . k_0 * scale - lse)``;
3. it writes per-program partial sums over its rows t >= 1, summed afterwards in PyTorch
   (deterministic, no atomics).

``received_kernel`` (only when asked) is a second pass, one program per block of keys, summing the
probabilities (from the rows' ``lse``) that every query tile gives its keys: each program owns its
keys' sums, so there are no atomic adds and the result is deterministic. Scores are ``tl.dot`` of the inputs in their own dtype with float32
accumulation (products of bf16/fp16 numbers are exact in float32; float32 inputs use IEEE float32
products, not TF32). :func:`usable` says when this path applies (CUDA tensors and Triton, or
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os
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

BLOCK_M = 64
BLOCK_N = 64
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
        import triton.language as tl
    except Exception:  # no triton (CPU builds of torch), or a broken install
        return None

    @triton.jit
    def row_kernel(q_ptr, k_ptr, start_ptr, end_ptr, lse_ptr, partial_ptr,
                   sqb, sqt, sqh, sqd, skb, skt, skh, skd,
                   n_q, n_k, offset, n_heads, rep, d_head, scale, sliding, window, n_gather,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_HEAD: tl.constexpr, G_PAD: tl.constexpr,
                   IEEE: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1).to(tl.int64)
        b = pid_bh // n_heads
        h = pid_bh % n_heads
        start = tl.load(start_ptr + b)
        end = tl.load(end_ptr + b)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rows = offset + offs_m
        offs_d = tl.arange(0, D_HEAD)
        q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqt + h * sqh + offs_d[None, :] * sqd,
                    mask=(offs_m < n_q)[:, None] & (offs_d < d_head)[None, :], other=0.0)
        k_base = b * skb + (h // rep) * skh
        first_row = offset + pid_m * BLOCK_M
        last_row = tl.minimum(first_row + BLOCK_M, offset + n_q) - 1
        lo = tl.maximum(start, first_row - sliding + 1)
        lo = tl.maximum(lo, 0)
        hi = tl.minimum(end, last_row + 1)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        a_i = tl.zeros([BLOCK_M], tl.float32)
        for n0 in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(k_ptr + k_base + offs_n[:, None] * skt + offs_d[None, :] * skd,
                        mask=(offs_n < n_k)[:, None] & (offs_d < d_head)[None, :], other=0.0)
            if IEEE:  # float32 inputs: IEEE products, not TF32
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:  # bf16/fp16 products are exact in the float32 accumulator
                s = tl.dot(q, tl.trans(k)) * scale
            vis = (offs_n[None, :] <= rows[:, None]) & (offs_n[None, :] >= start) & (offs_n[None, :] < end)
            vis = vis & (rows[:, None] - offs_n[None, :] < sliding)
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            e = tl.exp(s - m_safe[:, None])
            centred = tl.where(vis, s - m_safe[:, None], 0.0)
            shift = tl.where(l_i > 0, m_i - m_safe, 0.0)  # m_i = -inf while l_i = 0: no inf * 0
            a_i = alpha * (a_i + shift * l_i) + tl.sum(e * centred, 1)
            l_i = alpha * l_i + tl.sum(e, 1)
            m_i = m_new
        m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        lse = m_safe + tl.log(l_safe)
        ent = tl.log(l_safe) - a_i / l_safe
        out = pid_bh * n_q + offs_m
        tl.store(lse_ptr + out, lse, mask=offs_m < n_q)
        used = (offs_m < n_q) & (rows >= start + 1) & (rows < end)  # query positions t >= 1

        # Band phase: probabilities at distances 0..G-1 of each row, gathered out of the tiles
        # that hold them (at most ceil((BLOCK_M + G) / BLOCK_N) + 1 tiles per program).
        offs_g = tl.arange(0, G_PAD)
        dist_acc = tl.zeros([G_PAD], tl.float32)
        local_acc = tl.zeros([BLOCK_M], tl.float32)
        local_nb_acc = tl.zeros([BLOCK_M], tl.float32)
        band_lo = tl.maximum(lo, first_row - n_gather + 1)
        for n0 in range((band_lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(k_ptr + k_base + offs_n[:, None] * skt + offs_d[None, :] * skd,
                        mask=(offs_n < n_k)[:, None] & (offs_d < d_head)[None, :], other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            vis = (offs_n[None, :] <= rows[:, None]) & (offs_n[None, :] >= start) & (offs_n[None, :] < end)
            vis = vis & (rows[:, None] - offs_n[None, :] < sliding) & used[:, None]
            p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
            column = rows[:, None] - offs_g[None, :] - n0  # [BLOCK_M, G_PAD]: tile column of key t - d
            here = (column >= 0) & (column < BLOCK_N) & (offs_g[None, :] < n_gather)
            near = tl.where(here, tl.gather(p, tl.minimum(tl.maximum(column, 0), BLOCK_N - 1), 1), 0.0)
            dist_acc += tl.sum(near, 0)
            in_window = offs_g[None, :] < window
            local_acc += tl.sum(tl.where(in_window, near, 0.0), 1)
            is_bos = (rows[:, None] - offs_g[None, :]) == start
            local_nb_acc += tl.sum(tl.where(in_window & ~is_bos, near, 0.0), 1)
        # sink: the key at position 0, wherever it is
        k0 = tl.load(k_ptr + k_base + start * skt + offs_d * skd, mask=offs_d < d_head, other=0.0)  # start < n_k always
        s0 = tl.sum(q.to(tl.float32) * k0.to(tl.float32)[None, :], 1) * scale
        sink = tl.where(used & (rows - start < sliding), tl.exp(s0 - lse), 0.0)
        ent = tl.where(used, ent, 0.0)
        partial = partial_ptr + (pid_bh * tl.num_programs(0) + pid_m) * (4 + G_PAD)
        tl.store(partial + 0, tl.sum(sink, 0))
        tl.store(partial + 1, tl.sum(ent, 0))
        tl.store(partial + 2, tl.sum(local_acc, 0))
        tl.store(partial + 3, tl.sum(local_nb_acc, 0))
        tl.store(partial + 4 + offs_g, dist_acc)

    @triton.jit
    def received_kernel(q_ptr, k_ptr, start_ptr, end_ptr, lse_ptr, recv_ptr,
                        sqb, sqt, sqh, sqd, skb, skt, skh, skd,
                        n_q, n_k, offset, n_heads, rep, d_head, scale, sliding,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_HEAD: tl.constexpr, IEEE: tl.constexpr):
        # One program per block of BLOCK_N keys and (batch, head): it loops over the query tiles
        # that can see its keys and owns their sums (a plain store: no atomics, deterministic).
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1).to(tl.int64)
        b = pid_bh // n_heads
        h = pid_bh % n_heads
        start = tl.load(start_ptr + b)
        end = tl.load(end_ptr + b)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D_HEAD)
        k_base = b * skb + (h // rep) * skh
        k = tl.load(k_ptr + k_base + offs_n[:, None] * skt + offs_d[None, :] * skd,
                    mask=(offs_n < n_k)[:, None] & (offs_d < d_head)[None, :], other=0.0)
        first_key = pid_n * BLOCK_N
        last_key = tl.minimum(first_key + BLOCK_N, n_k) - 1
        # rows that may see these keys: first_key <= row < last_key + sliding, start < row < end
        lo = tl.maximum(tl.maximum(first_key, start + 1) - offset, 0)
        hi = tl.minimum(tl.minimum(end, offset + n_q), last_key + sliding) - offset
        acc = tl.zeros([BLOCK_N], tl.float32)
        for m0 in range((lo // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            rows = offset + offs_m
            q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqt + h * sqh + offs_d[None, :] * sqd,
                        mask=(offs_m < n_q)[:, None] & (offs_d < d_head)[None, :], other=0.0)
            lse = tl.load(lse_ptr + pid_bh * n_q + offs_m, mask=offs_m < n_q, other=0.0)
            used = (offs_m < n_q) & (rows >= start + 1) & (rows < end)
            if IEEE:  # float32 inputs: IEEE products, not TF32
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:  # bf16/fp16 products are exact in the float32 accumulator
                s = tl.dot(q, tl.trans(k)) * scale
            vis = (offs_n[None, :] <= rows[:, None]) & (offs_n[None, :] >= start) & (offs_n[None, :] < end)
            vis = vis & (rows[:, None] - offs_n[None, :] < sliding) & used[:, None]
            p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
            acc += tl.sum(p, 0)
        tl.store(recv_ptr + pid_bh * n_k + offs_n, acc, mask=offs_n < n_k)

    return SimpleNamespace(triton=triton, rows=row_kernel, received=received_kernel)


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
    n_blocks = kernels.triton.cdiv(n_q, BLOCK_M)
    grid = (n_blocks, batch * n_heads)
    lse = torch.empty(batch, n_heads, n_q, dtype=torch.float32, device=q.device)
    partial = torch.empty(batch, n_heads, n_blocks, 4 + g_pad, dtype=torch.float32, device=q.device)
    common = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_HEAD=max(16, kernels.triton.next_power_of_2(d_head)),
                  IEEE=q.dtype == torch.float32, num_warps=4,
                  **({} if _interpreting() else {"enable_fp_fusion": FP_FUSION}))
    sliding = NO_WINDOW if sliding_window is None else int(sliding_window)
    with torch.cuda.device(q.device) if q.is_cuda else _null():
        kernels.rows[grid](q, k, start, end, lse, partial, *q.stride(), *k.stride(), n_q, n_k, offset, n_heads,
                           n_heads // n_kv, d_head, float(scale), sliding, window, n_gather, G_PAD=g_pad, **common)
        got = None
        if received:
            got = torch.zeros(batch, n_heads, n_k, dtype=torch.float32, device=q.device)
            key_grid = (kernels.triton.cdiv(n_k, BLOCK_N), batch * n_heads)
            kernels.received[key_grid](q, k, start, end, lse, got, *q.stride(), *k.stride(), n_q, n_k, offset,
                                       n_heads, n_heads // n_kv, d_head, float(scale), sliding, **common)
    sums = partial.sum(dim=2)  # [batch, head, 4 + G_PAD]
    rows = torch.arange(offset, n_k, device=q.device)
    n_rows = ((rows[None] >= start[:, None] + 1) & (rows[None] < end[:, None])).sum(dim=1)
    den = n_rows.clamp(min=1).float()[:, None]
    return AttentionStats(
        sink_score=sums[..., 0] / den, entropy=sums[..., 1] / den, local_mass=sums[..., 2] / den,
        local_mass_no_bos=sums[..., 3] / den, distance=sums[..., 4 : 4 + max_distance] / den[..., None],
        n_queries=n_rows, received=got,
    )


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *args):
        return False
