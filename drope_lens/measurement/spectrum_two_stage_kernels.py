"""Triton kernels of :mod:`drope_lens.measurement.spectrum_two_stage` (imported only when Triton is
present: CPU builds of torch ship none). One program per matrix in both kernels."""

import triton
import triton.language as tl


@triton.jit
def _reflect(x, first):
    """``(v, tau, alpha)`` of the reflector with ``(I - tau v v^T) x = alpha e_first``; x is zero
    above ``first`` (module ``householder.reflector``'s formulas)."""
    x0 = tl.sum(tl.where(first, x, 0.0), 0)
    norm = tl.sqrt(tl.sum(x * x, 0))
    alpha = tl.where(x0 < 0, norm, -norm)
    v = tl.where(first, x0 - alpha, x)
    vv = 2.0 * norm * (norm + tl.abs(x0))
    tau = tl.where(vv > 0, 2.0 / tl.where(vv > 0, vv, 1.0), 0.0)
    return v, tau, alpha


@triton.jit
def panel_qr(a_ptr, v_ptr, tau_ptr, n, top, start, m, M_POW2: tl.constexpr, B: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, M_POW2)
    cols = tl.arange(0, B)
    row_in = rows < m
    pointers = a_ptr + b * n * n + (top + rows[:, None]).to(tl.int64) * n + start + cols[None, :]
    panel = tl.load(pointers, mask=row_in[:, None], other=0.0)
    for c in range(0, B):
        column = tl.sum(tl.where(cols[None, :] == c, panel, 0.0), 1)  # [M_POW2]
        x = tl.where(rows >= c, column, 0.0)
        v, tau, alpha = _reflect(x, rows == c)
        v = tl.where(rows >= c, v, 0.0)
        vp = tl.sum(panel * v[:, None], 0)  # [B]: v^T panel
        panel = panel - (tau * v)[:, None] * vp[None, :]
        at_c = cols[None, :] == c
        panel = tl.where(at_c & (rows[:, None] > c), 0.0, panel)
        panel = tl.where(at_c & (rows[:, None] == c), alpha, panel)
        tl.store(v_ptr + b * m * B + rows * B + c, v, mask=row_in)
        tl.store(tau_ptr + b * B + c, tau)
    tl.store(pointers, panel, mask=row_in[:, None])

@triton.jit
def _diagonal_block(base, n, r_s, r, lower, SYMMETRIC: tl.constexpr):
    """The diagonal block at rows and columns ``r_s .. r_s + B - 1``: its lower triangle, or with
    ``SYMMETRIC`` both triangles, each entry (i, j) read at (max(i, j), min(i, j))."""
    rows = r_s + r
    row_in = rows < n
    if SYMMETRIC:
        i, j = rows[:, None], rows[None, :]
        return tl.load(base + tl.maximum(i, j).to(tl.int64) * n + tl.minimum(i, j),
                       mask=row_in[:, None] & row_in[None, :], other=0.0)
    mask = row_in[:, None] & row_in[None, :] & lower
    return tl.load(base + rows[:, None].to(tl.int64) * n + rows[None, :], mask=mask, other=0.0)


@triton.jit
def _block_below(base, n, r_s, r):
    """The block at rows ``r_s + B ..`` and columns ``r_s ..`` (B x B; zero past the matrix)."""
    rows = r_s + r
    below_rows = rows + r.shape[0]
    mask = (below_rows < n)[:, None] & (rows < n)[None, :]
    return tl.load(base + below_rows[:, None].to(tl.int64) * n + rows[None, :], mask=mask, other=0.0)


@triton.jit
def chase_bulges(a_ptr, d_ptr, e_ptr, n, B: tl.constexpr, N_POW2: tl.constexpr, PREFETCH: tl.constexpr,
                 SYMMETRIC: tl.constexpr, CARRY_PIVOT: tl.constexpr = False):
    b = tl.program_id(0).to(tl.int64)
    base = a_ptr + b * n * n
    r = tl.arange(0, B)
    c = tl.arange(0, B)
    lower = r[:, None] >= c[None, :]
    if CARRY_PIVOT:
        _chase_carrying_the_pivot(base, n, B)
    else:
        _chase(base, n, r, c, lower, B, PREFETCH, SYMMETRIC)
    tl.debug_barrier()
    idx = tl.arange(0, N_POW2)
    tl.store(d_ptr + b * n + idx, tl.load(base + idx.to(tl.int64) * (n + 1), mask=idx < n), mask=idx < n)
    sub = idx < n - 1
    tl.store(e_ptr + b * (n - 1) + idx, tl.load(base + (idx + 1).to(tl.int64) * n + idx, mask=sub), mask=sub)


@triton.jit
def _chase(base, n, r, c, lower, B: tl.constexpr, PREFETCH: tl.constexpr, SYMMETRIC: tl.constexpr):
    for i in range(0, n - 2):
        tl.debug_barrier()  # the previous sweep's stores are visible to every thread
        r0 = i + 1
        rows = r0 + r
        cols = r0 - B + c
        tile_mask = (rows < n)[:, None] & (cols >= 0)[None, :]
        tile = tl.load(base + rows[:, None].to(tl.int64) * n + cols[None, :], mask=tile_mask, other=0.0)
        stored = _diagonal_block(base, n, r0, r, lower, SYMMETRIC)
        below = _block_below(base, n, r0, r)
        for step in range(0, tl.cdiv(n - r0, B)):
            r_s = r0 + step * B
            if PREFETCH:  # the next step's blocks: this step neither reads nor writes them
                stored_next = _diagonal_block(base, n, r_s + B, r, lower, SYMMETRIC)
                below_next = _block_below(base, n, r_s + B, r)
            rows = r_s + r
            row_in = rows < n
            # the reflector that annihilates the tile's pivot column below its first row
            pivot = tl.where(step == 0, B - 1, 0)
            x = tl.sum(tl.where(c[None, :] == pivot, tile, 0.0), 1)
            v, tau, alpha = _reflect(x, r == 0)
            tile = tile - (tau * v)[:, None] * tl.sum(tile * v[:, None], 0)[None, :]
            at_pivot = c[None, :] == pivot
            tile = tl.where(at_pivot, tl.where(r[:, None] == 0, alpha, 0.0), tile)
            cols = r_s - B + c
            t_mask = row_in[:, None] & (cols >= 0)[None, :]
            tl.store(base + rows[:, None].to(tl.int64) * n + cols[None, :], tile, mask=t_mask)
            # two-sided on the diagonal block (both triangles: read so, or rebuilt from the lower one)
            block = stored if SYMMETRIC else tl.where(lower, stored, tl.trans(stored))
            p = tau * tl.sum(block * v[None, :], 1)
            w = p - (0.5 * tau * tl.sum(p * v, 0)) * v
            block = block - v[:, None] * w[None, :] - w[:, None] * v[None, :]
            tl.store(base + rows[:, None].to(tl.int64) * n + rows[None, :], block,
                     mask=row_in[:, None] & row_in[None, :] & lower)
            # from the right on the block below: its fill is the next step's tile
            tile = below - (tau * tl.sum(below * v[None, :], 1))[:, None] * v[None, :]
            if PREFETCH:
                stored = stored_next
                below = below_next
            else:
                stored = _diagonal_block(base, n, r_s + B, r, lower, SYMMETRIC)
                below = _block_below(base, n, r_s + B, r)


@triton.jit
def _chase_carrying_the_pivot(base, n, B: tl.constexpr):
    """:func:`_chase` (prefetching, lower triangles) with two changes that shorten each step's chain
    of dependent reductions and layout changes: indices and masks are 2-D from the start, and the
    next step's pivot column ``x`` is carried instead of extracted from the new tile: the new tile is
    ``below - tau (below v) v^T``, so its column 0 is ``below[:, 0] - tau (below v) v_0``, with
    ``below[:, 0]`` taken from the block loaded a step ahead."""
    rr = tl.arange(0, B)[:, None]  # [B, 1]
    cc = tl.arange(0, B)[None, :]  # [1, B]
    lower = rr >= cc
    first = tl.arange(0, B) == 0  # [B] over rows
    for i in range(0, n - 2):
        tl.debug_barrier()  # the previous sweep's stores are visible to every thread
        r0 = i + 1
        rows = r0 + rr
        cols = r0 - B + cc
        tile = tl.load(base + rows.to(tl.int64) * n + cols, mask=(rows < n) & (cols >= 0), other=0.0)
        x = tl.sum(tl.where(cc == B - 1, tile, 0.0), 1)  # the pivot column of the sweep's first tile
        stored = _block_2d(base, n, r0 + rr, r0 + cc, lower)
        below = _block_2d(base, n, r0 + B + rr, r0 + cc, rr >= 0)
        for step in range(0, tl.cdiv(n - r0, B)):
            r_s = r0 + step * B
            rows = r_s + rr
            rows_t = r_s + cc
            stored_next = _block_2d(base, n, r_s + B + rr, r_s + B + cc, lower)
            below_next = _block_2d(base, n, r_s + 2 * B + rr, r_s + B + cc, rr >= 0)
            below_first = tl.sum(tl.where(cc == 0, below, 0.0), 1)  # below[:, 0]: off the chain
            x0 = tl.sum(tl.where(first, x, 0.0), 0)  # _reflect's formulas, with v_0 kept
            norm = tl.sqrt(tl.sum(x * x, 0))
            alpha = tl.where(x0 < 0, norm, -norm)
            v0 = x0 - alpha
            v = tl.where(first, v0, x)
            vv = 2.0 * norm * (norm + tl.abs(x0))
            tau = tl.where(vv > 0, 2.0 / tl.where(vv > 0, vv, 1.0), 0.0)
            pivot = tl.where(step == 0, B - 1, 0)
            tile = tile - (tau * v)[:, None] * tl.sum(tile * v[:, None], 0)[None, :]
            at_pivot = cc == pivot
            tile = tl.where(at_pivot, tl.where(rr == 0, alpha, 0.0), tile)
            cols = r_s - B + cc
            tl.store(base + rows.to(tl.int64) * n + cols, tile, mask=(rows < n) & (cols >= 0))
            # two-sided on the diagonal block, rebuilt from its lower triangle
            block = tl.where(lower, stored, tl.trans(stored))
            v_t = v[None, :]
            p = tau * tl.sum(block * v_t, 1)
            w = p - (0.5 * tau * tl.sum(p * v, 0)) * v
            block = block - v[:, None] * w[None, :] - w[:, None] * v_t
            tl.store(base + rows.to(tl.int64) * n + rows_t, block, mask=(rows < n) & (rows_t < n) & lower)
            # from the right on the block below: its fill is the next step's tile, its column 0 the next x
            s = tau * tl.sum(below * v_t, 1)
            tile = below - s[:, None] * v_t
            x = below_first - s * v0
            stored = stored_next
            below = below_next


@triton.jit
def _block_2d(base, n, rows, cols, keep):
    """The entries at 2-D ``rows`` x ``cols`` where ``keep`` (zero elsewhere and past the matrix)."""
    return tl.load(base + rows.to(tl.int64) * n + cols, mask=(rows < n) & (cols < n) & keep, other=0.0)


@triton.jit
def t_factor(gram_ptr, tau_ptr, t_ptr, B: tl.constexpr):
    """LAPACK ``dlarft``'s upper-triangular T (forward, columnwise) from ``V^T V`` and ``tau``:
    ``T[:c, c] = -tau_c T[:c, :c] (V^T V)[:c, c]``, ``T[c, c] = tau_c``."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, B)
    c = tl.arange(0, B)
    gram = tl.load(gram_ptr + b * B * B + r[:, None] * B + c[None, :])
    t = tl.zeros([B, B], tl.float64)
    for k in range(0, B):
        tau = tl.load(tau_ptr + b * B + k)
        g = tl.sum(tl.where((c[None, :] == k) & (r[:, None] < k), gram, 0.0), 1)  # (V^T v_k)[:k]
        column = -tau * tl.sum(t * g[None, :], 1)  # T[:, :k] (V^T v_k)[:k]
        column = tl.where(r == k, tau, tl.where(r < k, column, 0.0))
        t = tl.where(c[None, :] == k, column[:, None], t)
    tl.store(t_ptr + b * B * B + r[:, None] * B + c[None, :], t)


@triton.jit
def update_and_multiply(a_ptr, w1_ptr, w2_ptr, vn_ptr, out_ptr, n, off, m, R: tl.constexpr, B: tl.constexpr,
                        BLOCK: tl.constexpr, COLUMNS: tl.constexpr):
    """Stage 1's trailing update fused with the next panel's product, on the lower triangle of the
    block ``A = a[off:, off:]`` (m x m) of each matrix: ``A <- A - W1 W2^T`` (W1 = [V Y], W2 = [Y V],
    m x R: a symmetric update) and ``out = A V_next`` (m x B) with A symmetric, read from its lower
    triangle only. Two launches: ``COLUMNS=False``, one program per block row I, updates and stores
    the lower tiles (I, J <= I) and writes ``out_I = sum_{J<I} A_IJ V_J + A_II V_I``; then
    ``COLUMNS=True``, one program per block column J, adds ``sum_{I>J} A_IJ^T V_I`` (the tiles already
    updated) to ``out_J``. Every sum in a fixed order: the result does not depend on scheduling."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = a_ptr + b * n * n + off * n + off
    k = tl.arange(0, R)[None, :]
    q = tl.arange(0, B)[None, :]
    mine = p * BLOCK + tl.arange(0, BLOCK)  # this program's block row (block column with COLUMNS)
    mine_in = mine < m
    acc = tl.zeros([BLOCK, B], tl.float64)
    if COLUMNS:
        for i in range(p + 1, tl.cdiv(m, BLOCK)):
            rows = i * BLOCK + tl.arange(0, BLOCK)
            rows_in = rows < m
            tile = tl.load(base + rows[:, None].to(tl.int64) * n + mine[None, :],
                           mask=rows_in[:, None] & mine_in[None, :], other=0.0)
            v_rows = tl.load(vn_ptr + b * m * B + rows[:, None] * B + q, mask=rows_in[:, None], other=0.0)
            acc += tl.dot(tl.trans(tile), v_rows)
        out = out_ptr + b * m * B + mine[:, None] * B + q
        tl.store(out, tl.load(out, mask=mine_in[:, None], other=0.0) + acc, mask=mine_in[:, None])
    else:
        w1 = tl.load(w1_ptr + b * m * R + mine[:, None] * R + k, mask=mine_in[:, None], other=0.0)
        for j in range(0, p):
            cols = j * BLOCK + tl.arange(0, BLOCK)
            pointers = base + mine[:, None].to(tl.int64) * n + cols[None, :]
            tile = tl.load(pointers, mask=mine_in[:, None], other=0.0)  # cols < m: j < p
            w2 = tl.load(w2_ptr + b * m * R + cols[:, None] * R + k)
            tile -= tl.dot(w1, tl.trans(w2))
            tl.store(pointers, tile, mask=mine_in[:, None])
            acc += tl.dot(tile, tl.load(vn_ptr + b * m * B + cols[:, None] * B + q))
        lower = mine[:, None] >= mine[None, :]
        keep = mine_in[:, None] & mine_in[None, :] & lower
        pointers = base + mine[:, None].to(tl.int64) * n + mine[None, :]
        tile = tl.load(pointers, mask=keep, other=0.0)
        w2 = tl.load(w2_ptr + b * m * R + mine[:, None] * R + k, mask=mine_in[:, None], other=0.0)
        tile -= tl.dot(w1, tl.trans(w2))
        tl.store(pointers, tile, mask=keep)
        tile = tl.where(lower, tile, tl.trans(tile))  # the whole symmetric diagonal block
        v_mine = tl.load(vn_ptr + b * m * B + mine[:, None] * B + q, mask=mine_in[:, None], other=0.0)
        acc += tl.dot(tile, v_mine)
        tl.store(out_ptr + b * m * B + mine[:, None] * B + q, acc, mask=mine_in[:, None])
