"""Two-stage tridiagonalisation of a batch of symmetric float64 matrices: dense -> band -> tridiagonal.

The one-stage reductions of :mod:`drope_lens.measurement.spectrum` and
:mod:`drope_lens.measurement.spectrum_persistent` read and write the whole trailing block once per
column: about n^3 / 3 float64 words moved per matrix, at memory speed (and, one program per matrix,
at memory latency). Here, as in PLASMA / MAGMA / ELPA's two-stage eigensolvers:

1. :func:`reduce_to_band`: blocked Householder reduction to a band of half-width :data:`BAND`.
   Per panel of ``band`` columns: the QR factorisation of the panel below the band (one Triton
   program per matrix holds the panel in registers: ``spectrum_two_stage_kernels.panel_qr``; a
   PyTorch loop without Triton), its reflectors accumulated as ``Q = I - V T V^T`` (``T^-1 = striu(V^T V) + diag(1 / tau)``),
   and the trailing block updated as ``Q^T A Q = A - V Y^T - Y V^T`` with
   ``Y = A V T - (1/2) V (T^T V^T A V T)``: batched float64 GEMMs (tensor cores on sm_80+). On the
   Triton path the update is applied to the lower triangle only, fused with the next panel's ``A V``
   (:data:`FUSED_UPDATE`).
2. :func:`band_to_tridiagonal`: bulge chasing (Householder form of LAPACK ``dsbtrd``, the
   "sweep" order of PLASMA's ``xHBCEU / xHBREL`` kernels). Sweep i annihilates column i below its
   subdiagonal with a reflector of length ``band``, applies it to the diagonal block (two-sided) and
   to the block below (from the right), which creates a bulge; the bulge's first column is
   annihilated by the next reflector, and so on down the band (``ceil((n - 1 - i) / band)`` steps).
   Every step touches three ``band x band`` tiles of the lower triangle; the tile below the diagonal
   block is kept in registers as the next step's tile, and its first column as the next pivot
   column. One Triton program per matrix (``spectrum_two_stage_kernels.chase_bulges``); a PyTorch
   version without Triton.

Every transform is an orthogonal similarity in float64: the eigenvalues keep LAPACK's backward
error (~ n * eps_float64 * ||A||). The tests compare the spectra with LAPACK's ``eigvalsh``.
Limits: n <= :data:`MAX_N` on the Triton path (a panel of ``n x band`` is held in registers).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from jaxtyping import Float

from drope_lens.measurement.householder import reflector

#: Half-width of the band between the stages (a power of two: the bulge-chasing tiles are band x band).
#: H200, 320 matrices of 512 (session 30, spectrum_bench): 16 -> 33.5 ms with the bisection, 32 -> 38.3-42.3,
#: 64 -> 113-182 (docs/gpu_evidence/spectrum_bench_h200_s30.json).
BAND = 16
#: Warps per program of the bulge-chasing kernel, and of the panel kernel per 16,384 panel elements
#: (512 rows x 32 columns; at most 16).
CHASE_WARPS = 4
#: Load each bulge-chasing step's two next blocks before the step's own work (hides their latency).
CHASE_PREFETCH = True
#: Read each step's diagonal block whole (entry (i, j) at (max(i, j), min(i, j))) instead of its
#: lower triangle and a transpose in registers. Slower on an H200 (band -> tridiagonal 13.4 against
#: 12.3 ms for 320 matrices of 512, docs/gpu_evidence/spectrum_bench_h200_s32_call3.json): off.
CHASE_SYMMETRIC_LOAD = False
#: The bulge chase with 2-D indices and each step's pivot column carried from the previous step
#: (``spectrum_two_stage_kernels._chase_carrying_the_pivot``; it always prefetches and reads lower
#: triangles: :data:`CHASE_PREFETCH` and :data:`CHASE_SYMMETRIC_LOAD` apply only without it): one
#: dependent reduction fewer per step. H200, 320 matrices of 512: band -> tridiagonal 11.9 and
#: 11.9 ms against 12.4 and 12.4 ms without (docs/gpu_evidence/spectrum_bench_h200_s33_call4.json).
CHASE_CARRY_PIVOT = True
PANEL_WARPS = 8
#: Panels of stage 1 whose trailing updates are applied together (see :func:`reduce_to_band`; k > 1
#: reads the trailing block once per panel, as 1 does, but writes it once per k panels). Slower on an
#: H200: dense -> band 16.8 / 20.8 / 23.7 ms with k = 2 / 3 / 4 against 12.9-15.0 ms with 1 (320
#: matrices of 512, medians of 9; docs/gpu_evidence/spectrum_bench_h200_s33_call1.json): 1.
PANELS_PER_UPDATE = 1
#: Stage 1 on the Triton path with each panel's trailing update fused with the next panel's
#: product ``A V`` (``spectrum_two_stage_kernels.update_and_multiply``), both on the lower triangle:
#: the trailing block is read and written once per panel (about 1.5 m^2 words moved, against 3 m^2
#: for a separate ``A V`` GEMM and a rank-2 band update of the whole block). Needs ``band >= 16``
#: (``tl.dot``) and one panel per update.
FUSED_UPDATE = True
#: Tile size (rows = columns) of :data:`FUSED_UPDATE`'s kernel, and its warps. H200, row 1 of
#: attention_stats_bench side by side (settings' order rotated, 9 rounds each): 16 / 2 took 164.0 and
#: 161.6 ms against 165.0 and 163.1 ms with 32 / 4, and 165.9 and 163.8 ms unfused; alone, in
#: spectrum_bench, the fused reduction took 11.9 against 12.8 ms unfused in one session-35 call and
#: 16.6-17.8 against 12.9 ms in another (docs/gpu_evidence/lead_call{1,3,4}_h200_s35_console.txt).
FUSED_BLOCK = 16
FUSED_WARPS = 2
#: Its launches' ``num_stages`` (software pipelining of the tile loops; 3 is Triton's default on CUDA).
FUSED_STAGES = 3
#: Largest n on the Triton path (the panel kernel holds a [next_pow2(n), band] float64 tile in registers).
MAX_N = 1024


def settings() -> tuple:
    """This module's settings that change the kernels :func:`tridiagonalize_two_stage` launches (a
    CUDA graph captured under other values must not be replayed)."""
    return (BAND, CHASE_WARPS, CHASE_PREFETCH, CHASE_SYMMETRIC_LOAD, CHASE_CARRY_PIVOT, PANEL_WARPS,
            PANELS_PER_UPDATE, FUSED_UPDATE, FUSED_BLOCK, FUSED_WARPS, FUSED_STAGES, MAX_N)


def tridiagonalize_two_stage(
    a: Float[torch.Tensor, "batch n n"], *, copy: bool = True, band: int = 0,
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch n_minus_1"]]:
    """Diagonal ``d`` and off-diagonal ``e`` of a tridiagonal matrix orthogonally similar to each
    symmetric matrix of ``a`` (float64; both triangles of ``a`` are read by stage 1).

    ``band``: half-width between the stages (0: :data:`BAND`; a power of two). ``copy=False``
    overwrites a contiguous float64 ``a`` with intermediate values. Triton (CUDA tensors, or
    ``TRITON_INTERPRET=1``) runs both stages' kernels; other tensors take the PyTorch versions.
    """
    if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a has shape {tuple(a.shape)}: expected [batch, n, n].")
    band = band or BAND
    if band < 2 or band & (band - 1):
        raise ValueError(f"band={band}: need a power of two >= 2.")
    if copy or a.dtype != torch.float64 or not a.is_contiguous():
        a = a.double().contiguous().clone()
    batch, n, _ = a.shape
    if n <= 2 or batch == 0:
        d = a.diagonal(dim1=1, dim2=2).clone()
        return d, (a[:, 1, :1].clone() if n == 2 else a.new_zeros(batch, max(n - 1, 0)))
    use_triton = _uses_triton(a)
    if use_triton and n > MAX_N:
        raise ValueError(f"n = {n}: the Triton path of tridiagonalize_two_stage handles n <= {MAX_N}.")
    reduce_to_band(a, band, use_triton=use_triton)
    return band_to_tridiagonal(a, band, use_triton=use_triton)


def reduce_to_band(
    a: Float[torch.Tensor, "batch n n"], band: int, *, use_triton: bool | None = None, panels_per_update: int = 0,
) -> None:
    """Stage 1, in place: make each symmetric matrix of ``a`` (contiguous float64) banded with
    half-width ``band`` by orthogonal similarity (module docstring). Entries below the band become
    exact zeros in the lower triangle; the upper triangle outside the trailing blocks goes stale
    (stage 2 reads only the lower triangle).

    ``panels_per_update`` (0: :data:`PANELS_PER_UPDATE`): panels whose trailing updates are applied
    together. The trailing block is then read once per panel (``A V``, corrected for the updates
    still pending by products with their thin factors) but written once per group: with k panels,
    one rank-2k*band update instead of k rank-2*band ones; a panel's own columns get the pending
    updates before its QR. k = 1 is the plain blocked reduction, operation for operation."""
    batch, n, _ = a.shape
    use_triton = _uses_triton(a) if use_triton is None else use_triton
    group = panels_per_update or PANELS_PER_UPDATE
    if group < 1:
        raise ValueError(f"panels_per_update={panels_per_update}: need at least 1.")
    if use_triton and group == 1 and FUSED_UPDATE and band >= 16:
        return _reduce_to_band_fused(a, band)
    pending_v = pending_y = None  # updates not yet applied, [batch, n - start, rank] from row `start`
    for start in range(0, n, band):
        top = start + band  # first row below the diagonal block of this panel
        m = n - top
        if m < 2:  # a single row below the band is already inside it
            break
        if pending_v is not None:  # this panel's columns (diagonal block and below) made current
            columns = a[:, start:, start:top]
            columns.baddbmm_(pending_v, pending_y[:, :band].mT, alpha=-1.0)
            columns.baddbmm_(pending_y, pending_v[:, :band].mT, alpha=-1.0)
            pending_v, pending_y = pending_v[:, band:], pending_y[:, band:]  # rows from `top` on
        v, tau = (_panel_triton if use_triton else _panel_torch)(a, top, start, m, band)
        t = _t_factor(v.mT @ v, tau, use_triton)  # Q = H_1 ... H_band = I - V T V^T
        trailing = a[:, top:, top:]
        av = trailing @ v  # the stored block, with the pending updates subtracted below
        if pending_v is not None:
            av -= pending_v @ (pending_y.mT @ v) + pending_y @ (pending_v.mT @ v)
        x = av @ t  # A V T
        m_small = t.mT @ (v.mT @ x)  # T^T V^T A V T
        y = torch.baddbmm(x, v, m_small, alpha=-0.5)
        pending_v = v if pending_v is None else torch.cat((pending_v, v), dim=-1)
        pending_y = y if pending_y is None else torch.cat((pending_y, y), dim=-1)
        last = n - (top + band) < 2
        if last or pending_v.shape[-1] >= group * band:
            trailing.baddbmm_(torch.cat((pending_v, pending_y), dim=-1), torch.cat((pending_y, pending_v), dim=-1).mT,
                              alpha=-1.0)
            pending_v = pending_y = None


def _reduce_to_band_fused(a, band):
    """:func:`reduce_to_band` (one panel per update) with each panel's trailing update applied to
    the lower triangle only, fused with the next panel's ``A V`` (:data:`FUSED_UPDATE`). Per panel:
    ``Y`` from ``A V`` as in the unfused loop; the next panel's columns updated alone (an m x band
    slab) and factorised; then one kernel pair updates the rest of the block's lower triangle and
    returns the next ``A V`` from it. The upper triangle is read only by the first panel's product."""
    kernel = _kernels()
    batch, n, _ = a.shape
    top = band
    if n - top < 2:
        return
    v, tau = _panel_triton(a, top, 0, n - top, band)
    av = a[:, top:, top:] @ v  # the whole block: both triangles are current before the first update
    while True:
        t = _t_factor(v.mT @ v, tau, True)  # Q = I - V T V^T
        x = av @ t  # A V T
        y = torch.baddbmm(x, v, t.mT @ (v.mT @ x), alpha=-0.5)
        vy = torch.cat((v, y), dim=-1)
        next_top = top + band
        m = n - next_top
        if m < 2:  # the last panel: the rest of the block is inside the band
            a[:, top:, top:].baddbmm_(vy, torch.cat((y, v), dim=-1).mT, alpha=-1.0)
            return
        a[:, top:, top:next_top].baddbmm_(vy, torch.cat((y[:, :band], v[:, :band]), dim=-1).mT, alpha=-1.0)
        v_next, tau = _panel_triton(a, next_top, top, m, band)
        w1 = vy[:, band:].contiguous()
        w2 = torch.cat((y[:, band:], v[:, band:]), dim=-1)
        av = a.new_empty(batch, m, band)
        grid = (kernel.triton.cdiv(m, FUSED_BLOCK), batch)
        with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
            for columns in (False, True):
                kernel.update_and_multiply[grid](a, w1, w2, v_next, av, n, next_top, m, R=2 * band, B=band,
                                                 BLOCK=FUSED_BLOCK, COLUMNS=columns, num_warps=FUSED_WARPS,
                                                 num_stages=FUSED_STAGES)
        v, top = v_next, next_top


def band_to_tridiagonal(
    a: Float[torch.Tensor, "batch n n"], band: int, *, use_triton: bool | None = None,
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch n_minus_1"]]:
    """Stage 2: ``(d, e)`` of the tridiagonal form of each banded symmetric matrix of ``a`` (lower
    triangle read, half-width <= ``band``), by bulge chasing (module docstring); ``a`` is overwritten."""
    batch, n, _ = a.shape
    use_triton = _uses_triton(a) if use_triton is None else use_triton
    if use_triton:
        kernel = _kernels()
        d = a.new_empty(batch, n)
        e = a.new_empty(batch, n - 1)
        with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
            kernel.chase_bulges[(batch,)](a, d, e, n, B=band, N_POW2=1 << (n - 1).bit_length(),
                                     PREFETCH=CHASE_PREFETCH, SYMMETRIC=CHASE_SYMMETRIC_LOAD,
                                     CARRY_PIVOT=CHASE_CARRY_PIVOT, num_warps=CHASE_WARPS)
        return d, e
    return _chase_torch(a, band)


def _panel_torch(a, top, start, m, band):
    """QR of each panel ``a[:, top:, start:top]`` in place (R on top, exact zeros below) by
    Householder reflectors; returns their vectors ``[batch, m, band]`` and ``tau`` ``[batch, band]``."""
    panel = a[:, top:, start:top]
    batch = a.shape[0]
    v_all = a.new_zeros(batch, m, band)
    tau_all = a.new_zeros(batch, band)
    for c in range(min(band, m)):
        alpha, v, tau = reflector(panel[:, c:, c])
        panel[:, c:, :] -= tau[:, None, None] * v[:, :, None] * (v[:, None, :] @ panel[:, c:, :])
        panel[:, c, c] = alpha
        panel[:, c + 1:, c] = 0.0
        v_all[:, c:, c] = v
        tau_all[:, c] = tau
    return v_all, tau_all


def _t_factor(gram, tau, use_triton):
    """LAPACK ``dlarft``'s T (``[batch, band, band]``, upper triangular) from ``V^T V`` and ``tau``."""
    batch, band, _ = gram.shape
    if use_triton:
        t = gram.new_empty(batch, band, band)
        with torch.cuda.device(gram.device) if gram.is_cuda else contextlib.nullcontext():
            _kernels().t_factor[(batch,)](gram.contiguous(), tau, t, B=band, num_warps=1)
        return t
    t = gram.new_zeros(batch, band, band)
    for k in range(band):
        t[:, :k, k] = -tau[:, k, None] * (t[:, :k, :k] @ gram[:, :k, k, None]).squeeze(-1)
        t[:, k, k] = tau[:, k]
    return t


def _panel_triton(a, top, start, m, band):
    kernel = _kernels()
    batch, n, _ = a.shape
    v = a.new_empty(batch, m, band)
    tau = a.new_empty(batch, band)
    m_pow2 = 1 << (m - 1).bit_length()
    warps = PANEL_WARPS * max(1, m_pow2 * band // (512 * 32))
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        kernel.panel_qr[(batch,)](a, v, tau, n, top, start, m, M_POW2=m_pow2, B=band, num_warps=min(warps, 16))
    return v, tau


def _chase_torch(a, band):
    """:func:`band_to_tridiagonal` in PyTorch, the same steps as the kernel on a zero-padded copy
    (padding rows and columns stay zero: reflectors vanish there)."""
    batch, n, _ = a.shape
    size = n + 3 * band
    work = a.new_zeros(batch, size, size)  # matrix index k sits at work index k + band
    work[:, band:band + n, band:band + n] = torch.tril(a)
    lower = torch.ones(band, band, dtype=torch.bool, device=a.device).tril()
    for i in range(n - 2):
        r0 = i + 1
        o = r0 + band
        tile = work[:, o:o + band, o - band:o].clone()
        step = 0
        while r0 < n:
            o = r0 + band
            pivot = band - 1 if step == 0 else 0
            alpha, v, tau = reflector(tile[:, :, pivot])
            tile -= tau[:, None, None] * v[:, :, None] * (v[:, None, :] @ tile)
            tile[:, :, pivot] = 0.0
            tile[:, 0, pivot] = alpha
            work[:, o:o + band, o - band:o] = tile
            stored = work[:, o:o + band, o:o + band]
            block = torch.where(lower, stored, stored.mT)
            p = tau[:, None] * (block @ v[:, :, None]).squeeze(-1)
            w = p - 0.5 * tau[:, None] * (p * v).sum(-1, keepdim=True) * v
            block = block - v[:, :, None] * w[:, None, :] - w[:, :, None] * v[:, None, :]
            work[:, o:o + band, o:o + band] = torch.where(lower, block, stored)
            below = work[:, o + band:o + 2 * band, o:o + band]
            tile = below - tau[:, None, None] * (below @ v[:, :, None]) * v[:, None, :]
            r0 += band
            step += 1
    inner = work[:, band:band + n, band:band + n]
    return inner.diagonal(dim1=1, dim2=2).clone(), inner.diagonal(offset=-1, dim1=1, dim2=2).clone()


def _uses_triton(a: torch.Tensor) -> bool:
    return _kernels() is not None and (a.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


@functools.lru_cache(maxsize=None)
def _kernels():
    """The Triton kernels' module, or None without Triton."""
    try:
        from drope_lens.measurement import spectrum_two_stage_kernels
    except Exception:  # CPU builds of torch ship no Triton
        return None
    return spectrum_two_stage_kernels
