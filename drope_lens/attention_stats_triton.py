"""Attention statistics on CUDA: a flash-attention-style Triton kernel plus an O(T * D) band step.

Computes exactly the statistics of :func:`drope_lens.attention_stats.attention_stats` (same
definitions, same float32 scores ``(q . k) * scale``; see that module) without a ``[T, T]`` matrix:

1. ``row_kernel`` (one program per block of query rows and (batch, head)) streams over the keys a
   row can see and keeps, online, the running maximum ``m``, ``l = sum exp(s - m)`` and
   ``a = sum exp(s - m) (s - m)``. At the end ``lse = m + ln l`` and the row entropy
   ``H = ln l - a / l`` (nats); rescaling ``a`` when ``m`` grows is exact
   (``a' = e^(m - m') (a + (m - m') l)``) and every term is relative to the row maximum, so large
   DroPE scores (|s| ~ 1e4) cost no precision. Scores are ``tl.dot`` of the inputs in their own
   dtype with float32 accumulation (products of bf16/fp16 numbers are exact in float32; float32
   inputs use IEEE float32 products, not TF32).
2. The band step (PyTorch, ``O(T * max(D, w) * d_head)`` per head): scores of each query with the
   keys at distances 0..D-1 and with position 0, turned into probabilities with the row's ``lse``:
   the distance profile, local masses and sink score.
3. ``received_kernel`` (only when asked): a second pass that adds each row's probabilities into
   per-key sums with atomic adds.

:func:`usable` says when this path applies (CUDA tensors and Triton, or ``TRITON_INTERPRET=1``).
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
#: Bytes the band step's gathered keys may take at once.
BAND_BYTES = 128 * 2**20
NO_WINDOW = 2**62


@functools.lru_cache(maxsize=None)
def _kernels() -> Optional[SimpleNamespace]:
    try:
        import triton
        import triton.language as tl
    except Exception:  # no triton (CPU builds of torch), or a broken install
        return None

    @triton.jit
    def row_kernel(q_ptr, k_ptr, start_ptr, end_ptr, lse_ptr, ent_ptr,
                   sqb, sqt, sqh, sqd, skb, skt, skh, skd,
                   n_q, n_k, offset, n_heads, rep, d_head, scale, sliding,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_HEAD: tl.constexpr, IEEE: tl.constexpr):
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
        tl.store(ent_ptr + out, ent, mask=offs_m < n_q)

    @triton.jit
    def received_kernel(q_ptr, k_ptr, start_ptr, end_ptr, lse_ptr, recv_ptr,
                        sqb, sqt, sqh, sqd, skb, skt, skh, skd,
                        n_q, n_k, offset, n_heads, rep, d_head, scale, sliding,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_HEAD: tl.constexpr, IEEE: tl.constexpr):
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
        used = (offs_m < n_q) & (rows >= start + 1) & (rows < end)
        lse = tl.load(lse_ptr + pid_bh * n_q + offs_m, mask=offs_m < n_q, other=0.0)
        k_base = b * skb + (h // rep) * skh
        first_row = offset + pid_m * BLOCK_M
        last_row = tl.minimum(first_row + BLOCK_M, offset + n_q) - 1
        lo = tl.maximum(tl.maximum(start, first_row - sliding + 1), 0)
        hi = tl.minimum(end, last_row + 1)
        for n0 in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(k_ptr + k_base + offs_n[:, None] * skt + offs_d[None, :] * skd,
                        mask=(offs_n < n_k)[:, None] & (offs_d < d_head)[None, :], other=0.0)
            if IEEE:  # float32 inputs: IEEE products, not TF32
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:  # bf16/fp16 products are exact in the float32 accumulator
                s = tl.dot(q, tl.trans(k)) * scale
            vis = (offs_n[None, :] <= rows[:, None]) & (offs_n[None, :] >= start) & (offs_n[None, :] < end)
            vis = vis & (rows[:, None] - offs_n[None, :] < sliding) & used[:, None]
            p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
            tl.atomic_add(recv_ptr + pid_bh * n_k + offs_n, tl.sum(p, 0), mask=offs_n < n_k)

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


def row_lse_entropy(
    q: Float[torch.Tensor, "batch q_pos head d_head"],
    k: Float[torch.Tensor, "batch k_pos kv_head d_head"],
    scale: float,
    start: Int[torch.Tensor, "batch"],
    end: Int[torch.Tensor, "batch"],
    sliding_window: Optional[int] = None,
) -> tuple[Float[torch.Tensor, "batch head q_pos"], Float[torch.Tensor, "batch head q_pos"]]:
    """Per query row: log-sum-exp of the visible scores and the row entropy (nats), float32."""
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("drope_lens.attention_stats_triton needs Triton; use drope_lens.attention_stats.")
    batch, n_q, n_heads, d_head = q.shape
    n_k, n_kv = k.shape[1], k.shape[2]
    if q.dtype != k.dtype:
        k = k.to(q.dtype)
    lse = torch.empty(batch, n_heads, n_q, dtype=torch.float32, device=q.device)
    ent = torch.empty_like(lse)
    grid = (kernels.triton.cdiv(n_q, BLOCK_M), batch * n_heads)
    d_pad = max(16, kernels.triton.next_power_of_2(d_head))
    with torch.cuda.device(q.device) if q.is_cuda else _null():
        kernels.rows[grid](
            q, k, start, end, lse, ent, *q.stride(), *k.stride(), n_q, n_k, n_k - n_q, n_heads, n_heads // n_kv,
            d_head, float(scale), NO_WINDOW if sliding_window is None else int(sliding_window),
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_HEAD=d_pad, IEEE=q.dtype == torch.float32, num_warps=4,
        )
    return lse, ent


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *args):
        return False


def _band_statistics(q, k, scale, lse, start, end, window, max_distance, sliding_window):
    """Sink score, local masses and distance profile from the scores of each query with the keys
    at distances 0..G-1 (G = max(window, max_distance)) and with position 0, using the row lse."""
    batch, n_q, n_heads, d_head = q.shape
    n_k, n_kv = k.shape[1], k.shape[2]
    rep, offset, device = n_heads // n_kv, n_k - n_q, q.device
    g = max(window, max_distance)
    sink = torch.zeros(batch, n_heads, device=device)
    local = torch.zeros_like(sink)
    local_no_bos = torch.zeros_like(sink)
    distance = torch.zeros(batch, n_heads, max_distance, device=device)
    n_rows = torch.zeros(batch, dtype=torch.long, device=device)
    arange_b = torch.arange(batch, device=device)
    k_bos = k[arange_b, start.clamp(max=n_k - 1)].float()  # [batch, kv, d_head]
    per_row = batch * g * n_kv * d_head * 4
    chunk = max(1, min(n_q, BAND_BYTES // max(1, per_row)))
    back_d = torch.arange(g, device=device)
    for q0 in range(0, n_q, chunk):
        q1 = min(n_q, q0 + chunk)
        rows = torch.arange(offset + q0, offset + q1, device=device)
        qf = q[:, q0:q1].float().reshape(batch, q1 - q0, n_kv, rep, d_head)
        used = (rows[None] >= start[:, None] + 1) & (rows[None] < end[:, None])  # [batch, rows]
        row_lse = lse[:, :, q0:q1].reshape(batch, n_kv, rep, q1 - q0).permute(0, 3, 1, 2)  # [b, rows, kv, rep]
        back = rows[:, None] - back_d[None, :]  # [rows, g] key index
        keys = k[:, back.clamp(min=0)].float()  # [batch, rows, g, kv, d_head]
        s = torch.einsum("btkrd,btgkd->btkrg", qf, keys) * scale
        ok = (back[None] >= start[:, None, None]) & (back[None] >= 0)  # [batch, rows, g]
        if sliding_window is not None:
            ok = ok & (back_d[None, None] < sliding_window)
        keep = ok[:, :, None, None] & used[:, :, None, None, None]
        p = torch.where(keep, torch.exp(s - row_lse[..., None]), torch.zeros((), device=device))
        p = p.reshape(batch, q1 - q0, n_heads, g)  # heads in kv-major order = model's head order
        distance += p[..., :max_distance].sum(dim=1)
        local += p[..., :window].sum(dim=(1, 3))
        bos_in = (back[None, :, :window] == start[:, None, None])  # [batch, rows, window]
        local_no_bos += (p[..., :window] * ~bos_in[:, :, None]).sum(dim=(1, 3))
        s_bos = torch.einsum("btkrd,bkd->btkr", qf, k_bos) * scale
        bos_seen = used if sliding_window is None else used & (rows[None] - start[:, None] < sliding_window)
        p_bos = torch.where(bos_seen[..., None, None], torch.exp(s_bos - row_lse), torch.zeros((), device=device))
        p_bos = p_bos.reshape(batch, q1 - q0, n_heads)
        sink += p_bos.sum(dim=1)
        n_rows += used.sum(dim=1)
    return sink, local, local_no_bos, distance, n_rows


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
    """Same result as :func:`drope_lens.attention_stats.attention_stats`, with the Triton kernels."""
    check_parameters(window, max_distance)
    batch, n_q, n_heads, d_head = q.shape
    n_k, n_kv = k.shape[1], k.shape[2]
    if k.shape[0] != batch or k.shape[3] != d_head or n_heads % n_kv or n_k < n_q:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit [batch, pos, head, d_head].")
    start, end = key_spans(attention_mask, batch, n_k, q.device)
    lse, ent = row_lse_entropy(q, k, scale, start, end, sliding_window)
    sink, local, local_no_bos, distance, n_rows = _band_statistics(
        q, k, scale, lse, start, end, window, max_distance, sliding_window)
    offset = n_k - n_q
    rows = torch.arange(offset, n_k, device=q.device)
    used = ((rows[None] >= start[:, None] + 1) & (rows[None] < end[:, None])).float()  # [batch, rows]
    entropy = (ent * used[:, None]).sum(dim=-1)
    got = None
    if received:
        kernels = _kernels()
        got = torch.zeros(batch, n_heads, n_k, dtype=torch.float32, device=q.device)
        kk = k.to(q.dtype) if k.dtype != q.dtype else k
        grid = (kernels.triton.cdiv(n_q, BLOCK_M), batch * n_heads)
        with torch.cuda.device(q.device) if q.is_cuda else _null():
            kernels.received[grid](
                q, kk, start, end, lse, got, *q.stride(), *kk.stride(), n_q, n_k, offset, n_heads, n_heads // n_kv,
                d_head, float(scale), NO_WINDOW if sliding_window is None else int(sliding_window),
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_HEAD=max(16, kernels.triton.next_power_of_2(d_head)),
                IEEE=q.dtype == torch.float32, num_warps=4,
            )
    den = n_rows.clamp(min=1).float()[:, None]
    return AttentionStats(
        sink_score=sink / den, entropy=entropy / den, local_mass=local / den, local_mass_no_bos=local_no_bos / den,
        distance=distance / den[..., None], n_queries=n_rows, received=got,
    )
