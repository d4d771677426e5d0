"""Householder tridiagonalisation of a batch of symmetric float64 matrices in ONE kernel launch.

:func:`drope_lens.measurement.spectrum.tridiagonalize_fused` launches one Triton kernel and about
15 small PyTorch kernels per column (n - 2 columns), so a batch is paced by launches and by
reading and writing each matrix whole per column. Here one Triton program owns one matrix for the
whole reduction (grid = batch): every column's Householder vector, the look-ahead rank-2 update
and the matrix-vector product run inside the program, synchronised by barriers; nothing returns to
the host until the tridiagonal form is done. Only the upper triangle is read and written (LAPACK
``uplo="U"``), which halves the memory traffic; ``p = B u`` adds each strip's row sums (upper part)
and its column sums (the mirrored lower part) kept in registers, so no atomics and a
deterministic order.

Algorithm per column k (the look-ahead form of LAPACK ``dsytd2``, same as ``tridiagonalize_fused``):
row k of the stored upper triangle, corrected by the pending update ``v w^T + w v^T`` of column
k - 1, gives column k of the current matrix; its Householder vector v (``H x = alpha e1``, sign
against cancellation) and tau; one pass over rows k+1..n-1 applies the pending update in place and
forms ``p = tau B v``; ``w = p - (tau / 2)(p . v) v`` becomes the pending update.

Limits: n <= :data:`MAX_N` (a row strip of the matrix is held in registers);
:func:`drope_lens.measurement.spectrum.symmetric_eigenvalues` uses the per-column kernels above it.
Scratch: four float64 vectors per matrix.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from jaxtyping import Float

#: Largest n handled (a strip of STRIP_ELEMENTS / n_pow2 rows x n_pow2 columns lives in registers).
MAX_N = 1024
#: Elements of one row strip (rows x next power of two of n) and warps per program. On an H200 (320
#: matrices of 512, session 28): 2,048 with 2 warps 84.1 ms, 4,096 with 4 (the earlier default)
#: 94.2 ms; issue 19's row 1 alternated in one process 2.41x / 2.47x against 2.46x / 2.54x.
STRIP_ELEMENTS = 2048
WARPS = 2
#: Software-pipelining stages of the row-strip loop (``tl.range(..., num_stages=STAGES)``): the
#: next strip's loads are issued while the current one is reduced. 1: no pipelining.
STAGES = 1


def tridiagonalize_persistent(
    a: Float[torch.Tensor, "batch n n"], *, copy: bool = True,
    strip_elements: int = 0, warps: int = 0, stages: int = 0,
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch n_minus_1"]]:
    """Diagonal ``d`` and off-diagonal ``e`` of a tridiagonal matrix orthogonally similar to each
    symmetric matrix of ``a`` (float64), reading only the upper triangle (module docstring).

    ``copy=False`` overwrites a contiguous float64 ``a``'s upper triangle with intermediate values.
    Needs Triton with CUDA tensors (or ``TRITON_INTERPRET=1``); 3 <= n <= :data:`MAX_N`.
    ``strip_elements``, ``warps``, ``stages`` (0: :data:`STRIP_ELEMENTS`, :data:`WARPS`,
    :data:`STAGES`) set the launch; a benchmark sweeps them.
    """
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("tridiagonalize_persistent needs Triton (CUDA tensors, or TRITON_INTERPRET=1).")
    if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a has shape {tuple(a.shape)}: expected [batch, n, n].")
    batch, n, _ = a.shape
    if not 3 <= n <= MAX_N:
        raise ValueError(f"n = {n}: tridiagonalize_persistent handles 3 <= n <= {MAX_N}.")
    if copy or a.dtype != torch.float64 or not a.is_contiguous():
        a = a.double().contiguous().clone()
    n_pow2 = 1 << (n - 1).bit_length()
    rows = max(1, (strip_elements or STRIP_ELEMENTS) // n_pow2)
    scratch = a.new_zeros(4, batch, n)  # v, w (pending update), u = tau v, p (row sums)
    d = a.new_empty(batch, n)
    e = a.new_empty(batch, n - 1)
    if batch:
        with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
            kernel[(batch,)](a, scratch, d, e, n, batch * n, N_POW2=n_pow2, ROWS=rows,
                         STAGES=stages or STAGES, num_warps=warps or WARPS)
    return d, e


@functools.lru_cache(maxsize=None)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except Exception:  # CPU builds of torch ship no Triton
        return None

    @triton.jit
    def tridiagonalize_kernel(a_ptr, scratch_ptr, d_ptr, e_ptr, n, stride_scratch,
                              N_POW2: tl.constexpr, ROWS: tl.constexpr, STAGES: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        a_base = a_ptr + b * n * n
        v_ptr = scratch_ptr + b * n
        w_ptr = v_ptr + stride_scratch
        u_ptr = w_ptr + stride_scratch
        p_ptr = u_ptr + stride_scratch
        idx = tl.arange(0, N_POW2)
        in_range = idx < n
        cols = tl.arange(0, N_POW2)
        col_in = cols < n
        strip_rows = tl.arange(0, ROWS)
        for k in range(0, n - 2):
            # column k of the current matrix = row k of the stored upper triangle - pending update
            v_old = tl.load(v_ptr + idx, mask=in_range, other=0.0)
            w_old = tl.load(w_ptr + idx, mask=in_range, other=0.0)
            at_k = idx == k
            v_k = tl.sum(tl.where(at_k, v_old, 0.0), 0)
            w_k = tl.sum(tl.where(at_k, w_old, 0.0), 0)
            live = (idx >= k) & in_range
            column = tl.load(a_base + k * n + idx, mask=live, other=0.0) - (v_old * w_k + w_old * v_k)
            column = tl.where(live, column, 0.0)
            tl.store(d_ptr + b * n + k, tl.sum(tl.where(at_k, column, 0.0), 0))
            below = (idx > k) & in_range  # never past n: the last matrix's p is the end of the scratch
            x = tl.where(below, column, 0.0)
            x0 = tl.sum(tl.where(idx == k + 1, column, 0.0), 0)
            norm = tl.sqrt(tl.sum(x * x, 0))
            alpha = tl.where(x0 < 0, norm, -norm)  # H x = alpha e1, sign against cancellation
            v = tl.where(idx == k + 1, x - alpha, x)
            vv = 2.0 * norm * (norm + tl.abs(x0))
            tau = tl.where(vv > 0, 2.0 / tl.where(vv > 0, vv, 1.0), 0.0)  # x = 0: no reflection
            tl.store(e_ptr + b * (n - 1) + k, alpha)
            tl.store(u_ptr + idx, v * tau, mask=in_range)
            tl.debug_barrier()
            # one pass over rows k+1..n-1 of the upper triangle: apply the pending update, p = B (tau v)
            v_c = tl.load(v_ptr + cols, mask=col_in, other=0.0)
            w_c = tl.load(w_ptr + cols, mask=col_in, other=0.0)
            u_c = tl.load(u_ptr + cols, mask=col_in, other=0.0)
            mirrored = tl.zeros([N_POW2], tl.float64)  # sum over rows i < j of B[i, j] u[i], per column j
            for r0 in tl.range(k + 1, n, ROWS, num_stages=STAGES):
                r = r0 + strip_rows
                row_in = r < n
                upper = row_in[:, None] & col_in[None, :] & (cols[None, :] >= r[:, None])
                pointers = a_base + r[:, None].to(tl.int64) * n + cols[None, :]
                strip = tl.load(pointers, mask=upper, other=0.0)
                v_r = tl.load(v_ptr + r, mask=row_in, other=0.0)
                w_r = tl.load(w_ptr + r, mask=row_in, other=0.0)
                u_r = tl.load(u_ptr + r, mask=row_in, other=0.0)
                strip = strip - v_r[:, None] * w_c[None, :] - w_r[:, None] * v_c[None, :]
                strip = tl.where(upper, strip, 0.0)
                tl.store(pointers, strip, mask=upper)
                tl.store(p_ptr + r, tl.sum(strip * u_c[None, :], 1), mask=row_in)
                strictly = cols[None, :] > r[:, None]
                mirrored += tl.sum(tl.where(strictly, strip, 0.0) * u_r[:, None], 0)
            tl.debug_barrier()
            p = tl.load(p_ptr + idx, mask=below, other=0.0) + tl.where(below, mirrored, 0.0)
            w = p - (0.5 * tau * tl.sum(p * v, 0)) * v
            tl.debug_barrier()
            tl.store(v_ptr + idx, v, mask=in_range)
            tl.store(w_ptr + idx, w, mask=in_range)
            tl.debug_barrier()
        # the last 2 x 2 block, with the pending update of column n - 3
        last = n - 2
        v_old = tl.load(v_ptr + idx, mask=in_range, other=0.0)
        w_old = tl.load(w_ptr + idx, mask=in_range, other=0.0)
        v0 = tl.sum(tl.where(idx == last, v_old, 0.0), 0)
        w0 = tl.sum(tl.where(idx == last, w_old, 0.0), 0)
        v1 = tl.sum(tl.where(idx == last + 1, v_old, 0.0), 0)
        w1 = tl.sum(tl.where(idx == last + 1, w_old, 0.0), 0)
        a00 = tl.load(a_base + last * n + last)
        a01 = tl.load(a_base + last * n + last + 1)
        a11 = tl.load(a_base + (last + 1) * n + last + 1)
        tl.store(d_ptr + b * n + last, a00 - (v0 * w0 + w0 * v0))
        tl.store(d_ptr + b * n + last + 1, a11 - (v1 * w1 + w1 * v1))
        tl.store(e_ptr + b * (n - 1) + last, a01 - (v0 * w1 + w0 * v1))

    return tridiagonalize_kernel

