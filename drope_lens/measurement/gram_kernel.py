"""Triton kernel of :func:`drope_lens.measurement.entropy.gram_matrix` (imported only when Triton is
present: CPU builds of torch ship none).

``gram_lower_tiles`` computes Y Y^T in float64 for a batch of ``[n, k]`` matrices Y given by their
strides (:func:`~drope_lens.measurement.entropy.gram_matrix` passes Y = X for X X^T), reading Y in
its own dtype and converting in registers: no float64 copy of X is written. One program per tile on or below the diagonal and
matrix: it accumulates its ``BLOCK x BLOCK`` tile over k in float64 ``tl.dot`` (DMMA on sm_90) in a
fixed order, stores it and, off the diagonal, its transpose. The result is exactly symmetric; every
product of two bfloat16 or float32 values is exact in float64, and only the sums' order differs from
a float64 GEMM's.

``BF16_PAIRS``: Y is bfloat16 with contiguous, even k, read as int32 words of two neighbouring
values (k even in the low half, k odd in the high half, little-endian), each widened by a shift
(a bfloat16 is the top half of a float32): two float64 products per step, over even and odd k.
Triton 3.6 (torch 2.11's) cannot compile a float64 ``tl.dot`` whose operands were loaded as 16-bit
values ("fp64 don't support largeK MMA"); 32-bit loads compile.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(tile):
    """Tile index -> (ti, tj), tj <= ti, row by row: tile = ti (ti + 1) / 2 + tj."""
    ti = ((tl.sqrt((8 * tile + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)  # float32 root, corrected
    ti = tl.where(ti * (ti + 1) // 2 > tile, ti - 1, ti)
    ti = tl.where((ti + 1) * (ti + 2) // 2 <= tile, ti + 1, ti)
    return ti, tile - ti * (ti + 1) // 2


@triton.jit
def gram_lower_tiles(y_ptr, out_ptr, n, k, stride_batch, stride_row, stride_k,
                     BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, BF16_PAIRS: tl.constexpr):
    """``k``, ``stride_*`` and ``BLOCK_K`` count int32 words (pairs) with ``BF16_PAIRS``, else values."""
    ti, tj = _tile(tl.program_id(0))
    b = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, BLOCK)
    rows = ti * BLOCK + r
    cols = tj * BLOCK + r
    ks = tl.arange(0, BLOCK_K)
    base = y_ptr + b * stride_batch
    row_pointers = base + rows[:, None].to(tl.int64) * stride_row + ks[None, :].to(tl.int64) * stride_k
    col_pointers = base + cols[:, None].to(tl.int64) * stride_row + ks[None, :].to(tl.int64) * stride_k
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float64)
    for start in range(0, k, BLOCK_K):
        k_in = (start + ks) < k
        a = tl.load(row_pointers, mask=(rows[:, None] < n) & k_in[None, :], other=0)
        c = tl.load(col_pointers, mask=(cols[:, None] < n) & k_in[None, :], other=0)
        if BF16_PAIRS:
            a_even = (a << 16).to(tl.float32, bitcast=True).to(tl.float64)
            c_even = (c << 16).to(tl.float32, bitcast=True).to(tl.float64)
            acc = tl.dot(a_even, tl.trans(c_even), acc, out_dtype=tl.float64)
            a_odd = (a & -65536).to(tl.float32, bitcast=True).to(tl.float64)
            c_odd = (c & -65536).to(tl.float32, bitcast=True).to(tl.float64)
            acc = tl.dot(a_odd, tl.trans(c_odd), acc, out_dtype=tl.float64)
        else:
            acc = tl.dot(a.to(tl.float64), tl.trans(c.to(tl.float64)), acc, out_dtype=tl.float64)
        row_pointers += BLOCK_K * stride_k
        col_pointers += BLOCK_K * stride_k
    out = out_ptr + b * n * n
    mask = (rows[:, None] < n) & (cols[None, :] < n)
    tl.store(out + rows[:, None].to(tl.int64) * n + cols[None, :], acc, mask=mask)
    if tj < ti:
        mask_t = (cols[:, None] < n) & (rows[None, :] < n)
        tl.store(out + cols[:, None].to(tl.int64) * n + rows[None, :], tl.trans(acc), mask=mask_t)
