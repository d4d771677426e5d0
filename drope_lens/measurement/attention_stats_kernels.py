"""Triton kernels of :mod:`drope_lens.measurement.attention_stats_triton` (imported only when Triton is).

``row_kernel``: one program per block of query rows and (batch, head): an online pass over the
visible keys (running max, sum and entropy accumulator in log2 units) that also keeps the scores of
the keys within ``n_gather`` of its rows, turned into probabilities once the row's ``lse`` is known
(distance profile, local masses); then the sink. ``received_kernel``: one program per block of
keys, summing the probabilities every visible query gives them. Key (query)
tiles seen whole by every row (key) of the block skip all masks; only the tiles on the causal
diagonal, the sliding-window edge and the padding edges are masked.
"""

import triton
import triton.language as tl


@triton.jit
def _scores(q, k, c, IEEE: tl.constexpr):
    # float32 scores in log2 units, (q . k) * (scale * log2 e), rounded once (no FMA contraction),
    # so every kernel rebuilds the same score bitwise (same dot shape [BLOCK_M, D] x [D, BLOCK_N])
    if IEEE:  # float32 inputs: IEEE products, not TF32
        return tl.dot(q, tl.trans(k), input_precision="ieee") * c
    else:  # bf16/fp16 products are exact in the float32 accumulator
        return tl.dot(q, tl.trans(k)) * c

@triton.jit
def _load(ptrs, ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr, d_ok):
    if MASKED:
        return tl.load(ptrs, mask=ok[:, None] & d_ok[None, :], other=0.0)
    elif EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=d_ok[None, :], other=0.0)

@triton.jit
def _gather_band(s, band, rows, n0, offs_g, BLOCK_N: tl.constexpr):
    # band[i, g] = s[i, key rows[i] - g] for the keys of this tile (tile column rows[i] - g - n0);
    # entries whose key lies in another tile keep their value
    column = rows[:, None] - offs_g[None, :] - n0  # [BLOCK_M, G_PAD]
    here = (column >= 0) & (column < BLOCK_N)
    return tl.where(here, tl.gather(s, tl.minimum(tl.maximum(column, 0), BLOCK_N - 1), 1), band)

@triton.jit
def _online_step(q, k_ptrs, n0, offs_n, rows, n_k, start, end, sliding, c, m_i, l_i, a_i, band, band_start,
                 offs_g, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    # one key tile of the row pass: running max m, l = sum 2^(s - m), a = sum 2^(s - m) (s - m);
    # a tile from band_start on may hold keys within n_gather of the rows: their scores go to band
    k = _load(k_ptrs, offs_n < n_k, MASKED, EVEN_D, d_ok)
    s = _scores(q, k, c, IEEE)
    if MASKED:
        vis = (offs_n[None, :] <= rows[:, None]) & (offs_n[None, :] >= start) & (offs_n[None, :] < end)
        vis = vis & (rows[:, None] - offs_n[None, :] < sliding)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        x = s - m_safe[:, None]
        e = tl.exp2(x)
        x = tl.where(vis, x, 0.0)
    else:  # every key of the tile is visible to every row of the block: no masks
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = m_new
        x = s - m_safe[:, None]
        e = tl.exp2(x)
    if n0 >= band_start:
        band = _gather_band(s, band, rows, n0, offs_g, BLOCK_N)
    alpha = tl.exp2(m_i - m_safe)
    shift = tl.where(l_i > 0, m_i - m_safe, 0.0)  # m_i = -inf while l_i = 0: no inf * 0
    a_i = alpha * (a_i + shift * l_i) + tl.sum(e * x, 1)
    l_i = alpha * l_i + tl.sum(e, 1)
    return m_new, l_i, a_i, band

@triton.jit
def row_kernel(q_ptr, k_ptr, start_ptr, end_ptr, lse_ptr, partial_ptr,
               sqb, sqt, sqh, sqd, skb, skt, skh, skd,
               n_q, n_k, offset, n_heads, rep, d_head, c, sliding, window, n_gather,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_HEAD: tl.constexpr, G_PAD: tl.constexpr,
               EVEN_D: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest (last) rows start first
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    start = tl.load(start_ptr + b)
    end = tl.load(end_ptr + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = offset + offs_m
    offs_d = tl.arange(0, D_HEAD)
    d_ok = offs_d < d_head
    q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqt + h * sqh + offs_d[None, :] * sqd,
                mask=(offs_m < n_q)[:, None] & d_ok[None, :], other=0.0)
    k_base = k_ptr + b * skb + (h // rep) * skh
    first_row = offset + pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, offset + n_q) - 1
    lo = tl.maximum(tl.maximum(start, first_row - sliding + 1), 0)
    hi = tl.minimum(end, last_row + 1)
    # key tiles that every row of the block sees whole, [full_lo, full_hi): no masks there
    full_lo = tl.cdiv(tl.maximum(start, last_row - sliding + 1), BLOCK_N) * BLOCK_N
    full_hi = (tl.maximum(tl.minimum(end, first_row + 1), 0) // BLOCK_N) * BLOCK_N
    mid_lo = tl.where(full_lo < full_hi, full_lo, hi)
    mid_hi = tl.where(full_lo < full_hi, full_hi, hi)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    a_i = tl.zeros([BLOCK_M], tl.float32)
    # band[i, d]: score of key rows[i] - d (d < G_PAD), -inf where not visible; filled by the tiles
    # from band_start on, which hold every visible key within n_gather of the block's rows
    offs_g = tl.arange(0, G_PAD)
    band = tl.full([BLOCK_M, G_PAD], float("-inf"), tl.float32)
    band_start = (tl.maximum(lo, first_row - n_gather + 1) // BLOCK_N) * BLOCK_N
    for n0 in range((lo // BLOCK_N) * BLOCK_N, mid_lo, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m_i, l_i, a_i, band = _online_step(q, k_base + offs_n[:, None] * skt + offs_d[None, :] * skd, n0, offs_n,
                                           rows, n_k, start, end, sliding, c, m_i, l_i, a_i, band, band_start,
                                           offs_g, d_ok, True, EVEN_D, IEEE, BLOCK_N)
    for n0 in range(mid_lo, mid_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m_i, l_i, a_i, band = _online_step(q, k_base + offs_n[:, None] * skt + offs_d[None, :] * skd, n0, offs_n,
                                           rows, n_k, start, end, sliding, c, m_i, l_i, a_i, band, band_start,
                                           offs_g, d_ok, False, EVEN_D, IEEE, BLOCK_N)
    for n0 in range(mid_hi, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m_i, l_i, a_i, band = _online_step(q, k_base + offs_n[:, None] * skt + offs_d[None, :] * skd, n0, offs_n,
                                           rows, n_k, start, end, sliding, c, m_i, l_i, a_i, band, band_start,
                                           offs_g, d_ok, True, EVEN_D, IEEE, BLOCK_N)
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    lse = m_safe + tl.log2(l_safe)  # log2 units
    ent = 0.6931471805599453 * (tl.log2(l_safe) - a_i / l_safe)  # nats (ln 2 x log2 units)
    out = pid_bh * n_q + offs_m
    tl.store(lse_ptr + out, lse, mask=offs_m < n_q)
    used = (offs_m < n_q) & (rows >= start + 1) & (rows < end)  # query positions t >= 1

    # probability at distances 0..n_gather-1 of each measured row: distance profile, local masses
    near = tl.where(used[:, None] & (offs_g[None, :] < n_gather), tl.exp2(band - lse[:, None]), 0.0)
    dist_acc = tl.sum(near, 0)
    in_window = offs_g[None, :] < window
    local_acc = tl.sum(tl.where(in_window, near, 0.0), 1)
    is_bos = (rows[:, None] - offs_g[None, :]) == start
    local_nb_acc = tl.sum(tl.where(in_window & ~is_bos, near, 0.0), 1)
    # sink: the key at position 0, wherever it is
    k0 = tl.load(k_base + start * skt + offs_d * skd, mask=d_ok, other=0.0)  # start < n_k always
    s0 = tl.sum(q.to(tl.float32) * k0.to(tl.float32)[None, :], 1) * c
    sink = tl.where(used & (rows - start < sliding), tl.exp2(s0 - lse), 0.0)
    ent = tl.where(used, ent, 0.0)
    partial = partial_ptr + (pid_bh * tl.num_programs(0) + pid_m) * (4 + G_PAD)
    tl.store(partial + 0, tl.sum(sink, 0))
    tl.store(partial + 1, tl.sum(ent, 0))
    tl.store(partial + 2, tl.sum(local_acc, 0))
    tl.store(partial + 3, tl.sum(local_nb_acc, 0))
    tl.store(partial + 4 + offs_g, dist_acc)

@triton.jit
def _received_step(k, q_ptrs, lse_ptrs, offs_m, offs_n, n_q, start, end, offset, sliding, c, acc, d_ok,
                   MASKED: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr):
    rows = offset + offs_m
    q = _load(q_ptrs, offs_m < n_q, MASKED, EVEN_D, d_ok)
    if MASKED:
        lse = tl.load(lse_ptrs, mask=offs_m < n_q, other=0.0)
    else:
        lse = tl.load(lse_ptrs)
    s = _scores(q, k, c, IEEE)
    if MASKED:
        used = (offs_m < n_q) & (rows >= start + 1) & (rows < end)
        vis = (offs_n[None, :] <= rows[:, None]) & (offs_n[None, :] >= start) & (offs_n[None, :] < end)
        vis = vis & (rows[:, None] - offs_n[None, :] < sliding) & used[:, None]
        acc += tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
    else:  # every row of the tile is measured and sees every key of the block
        acc += tl.exp2(s - lse[:, None])
    return acc

@triton.jit
def received_kernel(q_ptr, k_ptr, start_ptr, end_ptr, lse_ptr, recv_ptr,
                    sqb, sqt, sqh, sqd, skb, skt, skh, skd,
                    n_q, n_k, offset, n_heads, rep, d_head, c, sliding,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_HEAD: tl.constexpr,
                    EVEN_D: tl.constexpr, IEEE: tl.constexpr):
    # One program per block of BLOCK_N keys and (batch, head): it loops over the query tiles
    # that can see its keys and owns their sums (a plain store: no atomics, deterministic).
    # Probabilities are summed into a [BLOCK_M, BLOCK_N] accumulator, reduced over rows once.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    start = tl.load(start_ptr + b)
    end = tl.load(end_ptr + b)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_HEAD)
    d_ok = offs_d < d_head
    k_base = b * skb + (h // rep) * skh
    k = tl.load(k_ptr + k_base + offs_n[:, None] * skt + offs_d[None, :] * skd,
                mask=(offs_n < n_k)[:, None] & d_ok[None, :], other=0.0)
    first_key = pid_n * BLOCK_N
    last_key = tl.minimum(first_key + BLOCK_N, n_k) - 1
    # rows that may see these keys: first_key <= row < last_key + sliding, start < row < end
    lo = tl.maximum(tl.maximum(first_key, start + 1) - offset, 0)
    hi = tl.minimum(tl.minimum(end, offset + n_q), last_key + sliding) - offset
    # query tiles whose rows are all measured and see every key of the block: no masks there
    keys_whole = (first_key >= start) & (first_key + BLOCK_N <= end)
    full_lo = tl.cdiv(tl.maximum(tl.maximum(first_key + BLOCK_N - 1, start + 1) - offset, 0), BLOCK_M) * BLOCK_M
    full_hi = (tl.maximum(tl.minimum(tl.minimum(end, offset + n_q), first_key + sliding) - offset, 0)
               // BLOCK_M) * BLOCK_M
    whole = keys_whole & (full_lo < full_hi)
    mid_lo = tl.where(whole, full_lo, hi)
    mid_hi = tl.where(whole, full_hi, hi)
    q_base = q_ptr + b * sqb + h * sqh
    lse_base = lse_ptr + pid_bh * n_q
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for m0 in range((lo // BLOCK_M) * BLOCK_M, mid_lo, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        acc = _received_step(k, q_base + offs_m[:, None] * sqt + offs_d[None, :] * sqd, lse_base + offs_m,
                             offs_m, offs_n, n_q, start, end, offset, sliding, c, acc, d_ok, True, EVEN_D, IEEE)
    for m0 in range(mid_lo, mid_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        acc = _received_step(k, q_base + offs_m[:, None] * sqt + offs_d[None, :] * sqd, lse_base + offs_m,
                             offs_m, offs_n, n_q, start, end, offset, sliding, c, acc, d_ok, False, EVEN_D, IEEE)
    for m0 in range(mid_hi, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        acc = _received_step(k, q_base + offs_m[:, None] * sqt + offs_d[None, :] * sqd, lse_base + offs_m,
                             offs_m, offs_n, n_q, start, end, offset, sliding, c, acc, d_ok, True, EVEN_D, IEEE)
    tl.store(recv_ptr + pid_bh * n_k + offs_n, tl.sum(acc, 0), mask=offs_n < n_k)

