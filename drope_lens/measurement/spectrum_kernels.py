"""Triton kernels of :mod:`drope_lens.measurement.spectrum` (imported only when Triton is present:
CPU builds of torch ship none): the bisection on Sturm counts and the fused per-column update."""

import triton
import triton.language as tl


@triton.jit
def reciprocal(q, FAST: tl.constexpr):
    """``1 / q`` per lane. ``FAST`` (CUDA only: inline PTX): the hardware's approximate reciprocal
    (``rcp.approx.ftz``: MUFU.RCP / MUFU.RCP64H, relative error ~2^-23), refined in float64 by one
    cubic Newton step (``r (1 + e + e^2)``, e = 1 - q r: error ~e^3 plus a rounding or two), with
    no range checks and no call to the IEEE division's slow path; else ``1 / q`` (IEEE division)."""
    if FAST:
        if q.dtype == tl.float64:
            r = tl.inline_asm_elementwise("rcp.approx.ftz.f64 $0, $1;", "=d,d", [q], dtype=tl.float64,
                                          is_pure=True, pack=1)
            e = tl.fma(-q, r, 1.0)
            return tl.fma(r, tl.fma(e, e, e), r)
        else:
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [q], dtype=tl.float32,
                                             is_pure=True, pack=1)
    else:
        return 1.0 / q


@triton.jit
def sturm_count(d_ptr, e2_ptr, base, n, x, pivmin, FAST: tl.constexpr = False):
    """Eigenvalues <= x of the tridiagonal matrix at ``base``, per lane (dlaebz's recurrence, in
    the dtype of ``x`` and the arrays). ``FAST``: ``e2 / q`` as ``e2 * reciprocal(q)`` fused into the
    subtraction (:func:`reciprocal`; one or two roundings more than the IEEE quotient, far below the
    count's backward error), which lets the compiler unroll the loop (no slow-path call)."""
    q = tl.load(d_ptr + base) - x
    q = tl.where(tl.abs(q) < pivmin, -pivmin + tl.zeros_like(x), q)
    count = tl.where(q <= 0, 1, 0)
    for j in range(1, n):
        if FAST:
            q = tl.fma(-tl.load(e2_ptr + base + j - 1), reciprocal(q, True), tl.load(d_ptr + base + j) - x)
        else:
            q = (tl.load(d_ptr + base + j) - x) - tl.load(e2_ptr + base + j - 1) / q
        q = tl.where(tl.abs(q) < pivmin, -pivmin + tl.zeros_like(x), q)
        count += tl.where(q <= 0, 1, 0)
    return count


@triton.jit
def bisect(d_ptr, e2_ptr, low_ptr, high_ptr, pivmin_ptr, halvings_ptr, out_ptr, n,
           d32_ptr, e2_32_ptr, low32_ptr, high32_ptr, scale_ptr, margin_ptr, left_ptr,
           BLOCK: tl.constexpr, HALVINGS_32: tl.constexpr, FAST: tl.constexpr = False):
    """Eigenvalues ``index`` of matrix ``b`` (one program per matrix and block of indices): the
    Gershgorin interval halved, first ``HALVINGS_32`` times in float32 on the scaled copy (``*32``
    arrays), then in float64 (module ``spectrum``'s ``tridiagonal_eigenvalues``)."""
    b = tl.program_id(0).to(tl.int64)
    index = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], tl.float64)
    low = zero + tl.load(low_ptr + b)
    high = zero + tl.load(high_ptr + b)
    lo, hi = low, high
    pivmin = tl.load(pivmin_ptr + b)
    base = b * n
    halvings = tl.load(halvings_ptr + b)
    if HALVINGS_32 > 0:
        # float32 stage on the matrix scaled by 1 / s (|entries| <= 1: no overflow, no underflow
        # that matters), then the interval in float64, widened, checked by float64 counts
        lo32 = tl.zeros([BLOCK], tl.float32) + tl.load(low32_ptr + b)
        hi32 = tl.zeros([BLOCK], tl.float32) + tl.load(high32_ptr + b)
        tiny32 = 1.1754943508222875e-38
        for _ in range(HALVINGS_32):
            mid32 = 0.5 * (lo32 + hi32)
            left32 = sturm_count(d32_ptr, e2_32_ptr, base, n, mid32, tiny32, FAST) > index
            hi32 = tl.where(left32, mid32, hi32)
            lo32 = tl.where(left32, lo32, mid32)
        scale = tl.load(scale_ptr + b)
        margin = tl.load(margin_ptr + b)
        lo = tl.maximum(lo32.to(tl.float64) * scale - margin, low)
        hi = tl.minimum(hi32.to(tl.float64) * scale + margin, high)
        good = (sturm_count(d_ptr, e2_ptr, base, n, lo, pivmin, FAST) <= index) & (
            sturm_count(d_ptr, e2_ptr, base, n, hi, pivmin, FAST) > index)
        lo = tl.where(good, lo, low)
        hi = tl.where(good, hi, high)
        # every interval that held goes on for the float64 halvings left; one that did not for all
        all_good = tl.min(tl.where(good | (index >= n), 1, 0), 0)
        halvings = tl.where(all_good == 1, tl.load(left_ptr + b), halvings)
    for _ in range(halvings):
        mid = 0.5 * (lo + hi)
        left = sturm_count(d_ptr, e2_ptr, base, n, mid, pivmin, FAST) > index
        hi = tl.where(left, mid, hi)
        lo = tl.where(left, lo, mid)
    tl.store(out_ptr + base + index, 0.5 * (lo + hi), mask=index < n)


@triton.jit
def update_matvec(a_ptr, v_ptr, w_ptr, u_ptr, p_ptr, n, start, m,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # block B = a[b, start:, start:] (m x m): B -= v w^T + w v^T in place; p = B_new u
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < m
    base = a_ptr + b * n * n + start * n + start
    v_r = tl.load(v_ptr + b * m + rows, mask=row_ok, other=0.0)
    w_r = tl.load(w_ptr + b * m + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_R], tl.float64)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < m
        ok = row_ok[:, None] & col_ok[None, :]
        pointers = base + rows[:, None].to(tl.int64) * n + cols[None, :]
        tile = tl.load(pointers, mask=ok, other=0.0)
        v_c = tl.load(v_ptr + b * m + cols, mask=col_ok, other=0.0)
        w_c = tl.load(w_ptr + b * m + cols, mask=col_ok, other=0.0)
        u_c = tl.load(u_ptr + b * m + cols, mask=col_ok, other=0.0)
        tile = tile - v_r[:, None] * w_c[None, :] - w_r[:, None] * v_c[None, :]
        tl.store(pointers, tile, mask=ok)
        acc += tl.sum(tile * u_c[None, :], 1)
    tl.store(p_ptr + b * m + rows, acc, mask=row_ok)
