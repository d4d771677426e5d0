"""Eigenvalues of many symmetric float64 matrices at once (the spectra of Gram matrices).

``torch.linalg.eigvalsh`` on CUDA solves a batch one matrix at a time (cuSOLVER ``syevd`` in a
loop; batched ``syevj`` only up to 32 x 32): about 4.5 ms per 512 x 512 float64 matrix on an
H200, 1.4 s for the 320 Gram matrices of one Exp 4 forward (10 texts x 32 layers). Here the
whole batch moves together:

1. :func:`tridiagonalize`: Householder reduction to tridiagonal form (LAPACK ``dsytd2``'s
   algorithm), one column for every matrix of the batch per step: a batched matrix-vector
   product and a batched rank-2 update (``baddbmm``) of the trailing blocks, float64. Orthogonal
   similarity transforms: backward stable, eigenvalue errors ~ n * eps_float64 * ||A||.
   :func:`tridiagonalize_fused` (``method="householder_fused"``, the CUDA default above n = 1,024) reads and
   writes each block once per column in one Triton kernel (tiles of ``UPDATE_ROWS`` x
   ``UPDATE_COLUMNS``). On CUDA either is captured once per batch shape as a CUDA graph and
   replayed (:data:`GRAPH`). Measured on an H200, 320 matrices of 512 x 512 with the bisection
   below (``spectrum_bench``, docs/gpu_evidence/stats_call2_h200_s24_console.txt): fused with
   8 x 512 tiles in a graph 110.6 ms (32 x 128 tiles 150.0 ms), unfused in a graph 153.4 ms,
   unfused eager 214.1 ms; entropy error 8.5e-14 for each; cuSOLVER ``eigvalsh`` 1,342 ms.
   The CUDA default up to n = 1,024 is
   :func:`drope_lens.measurement.spectrum_persistent.tridiagonalize_persistent`: the same
   reduction as one kernel launch (one program per matrix, upper triangle only): 94.1 ms with the
   bisection (fused in a graph 111.0 ms in the same run; LAPACK's blocked panels,
   :mod:`drope_lens.measurement.spectrum_blocked`, 93.4-106.7 ms for 16-64 columns per panel,
   kept as ``method="householder_blocked"``; docs/gpu_evidence/lead_call{1,2,4}_h200_s25_console.txt).
   It needs no CUDA graph and so no graph-held copy of the batch.
2. :func:`tridiagonal_eigenvalues`: bisection on Sturm counts (LAPACK ``dlaebz``'s recurrence
   with its pivot guard), every eigenvalue of every matrix independently, halving the Gershgorin
   interval until it is eps_float64 * max|bound| wide (about 53 halvings; 64 before session 31).
   On CUDA a Triton kernel (one program per matrix and block of eigenvalue indices,
   :mod:`drope_lens.measurement.spectrum_kernels`): its first :data:`FLOAT32_HALVINGS` halvings run
   in float32 on the scaled matrix, the interval is widened and checked by two float64 counts, and
   about 36 float64 halvings finish it; elsewhere the float64 recurrence vectorised in PyTorch (for
   tests and small inputs).

:func:`symmetric_eigenvalues` picks the path: CPU tensors go to LAPACK (``eigvalsh``), which is
fast there; CUDA tensors to 1 + 2 when Triton is available: up to n = 1,024 the two-stage reduction of
:mod:`drope_lens.measurement.spectrum_two_stage` (dense -> band by blocked Householder GEMMs, band ->
tridiagonal by bulge chasing; 33.8 ms for the 320 matrices with the bisection against the one-launch
path's 84.0 ms, spectrum_bench, session 30), above it the fused per-column kernel.
cuSOLVER's own batched solver for any n (``cusolverDnXsyevBatched``, which PyTorch does not reach
above n = 32) is ``method="cusolver_batched"`` (:mod:`drope_lens.measurement.spectrum_cusolver`);
on an H200 it matched LAPACK and took 98.9 ms for 320 matrices of 512 x 512 against the one-launch
path's 95.1 ms (``spectrum_bench``, session 27; 84.1 ms with session 28's launch setting), so "auto"
does not choose it (:data:`AUTO_CUDA_METHOD` can).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Literal

import torch
from jaxtyping import Float

from drope_lens.measurement.householder import reflector

from drope_lens.measurement import spectrum_blocked as blocked
from drope_lens.measurement import spectrum_persistent as persistent
from drope_lens.measurement import spectrum_two_stage as two_stage

Method = Literal["auto", "eigvalsh", "householder", "householder_fused", "householder_persistent", "householder_blocked",
                 "cusolver_batched", "two_stage"]
METHODS = ("auto", "eigvalsh", "householder", "householder_fused", "householder_persistent", "householder_blocked",
           "cusolver_batched", "two_stage")
N_HALVINGS = 64
BLOCK = 128
#: What ``method="auto"`` uses for CUDA tensors instead of its own choice (None: two_stage up to
#: n = 1,024, householder_fused above). The benchmarks' ``--spectrum-method`` sets it, so a
#: whole Exp 4 measurement can be timed with another method without editing code.
AUTO_CUDA_METHOD: str | None = None
#: Tile of the fused update kernel: the fastest of six in spectrum_bench --update-tiles (H200).
UPDATE_ROWS, UPDATE_COLUMNS, UPDATE_WARPS = 8, 512, 4


def symmetric_eigenvalues(
    a: Float[torch.Tensor, "batch n n"], *, method: Method = "auto", overwrite: bool = False,
) -> Float[torch.Tensor, "batch n"]:
    """Ascending eigenvalues (float64) of each symmetric ``[n, n]`` matrix of ``a`` (lower triangle
    and upper are both read: ``a`` must be symmetric).

    ``method``: ``"eigvalsh"`` (``torch.linalg.eigvalsh``), ``"householder"`` (module docstring),
    ``"householder_fused"`` (the same with :func:`tridiagonalize_fused`; needs Triton: CUDA or the
    interpreter), ``"householder_persistent"`` (one kernel launch for the whole reduction, upper
    triangle only: :mod:`drope_lens.measurement.spectrum_persistent`; n <= 1,024),
    ``"householder_blocked"`` (LAPACK ``dsytrd``'s panels: :mod:`drope_lens.measurement.spectrum_blocked`),
    ``"cusolver_batched"`` (one ``cusolverDnXsyevBatched`` call, CUDA only, cuSOLVER >= 11.7.1:
    :mod:`drope_lens.measurement.spectrum_cusolver`), ``"two_stage"`` (dense -> band -> tridiagonal:
    :mod:`drope_lens.measurement.spectrum_two_stage`), ``"auto"``: on CUDA with Triton two_stage up to
    n = 1,024 and householder_fused above, else eigvalsh. ``overwrite=True`` lets two_stage work in
    place on a contiguous float64 ``a`` (the caller's batch is then garbage; saves one copy).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: allowed values are {list(METHODS)}.")
    if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a has shape {tuple(a.shape)}: expected [batch, n, n].")
    a = a.double()
    if method == "auto":
        if not (a.is_cuda and _kernel() is not None):
            method = "eigvalsh"
        elif AUTO_CUDA_METHOD is not None:
            method = AUTO_CUDA_METHOD
        else:
            method = "two_stage" if a.shape[-1] <= two_stage.MAX_N else "householder_fused"
    if method == "cusolver_batched":
        from drope_lens.measurement.spectrum_cusolver import batched_eigenvalues

        if not a.is_cuda:
            raise ValueError("method='cusolver_batched' needs a CUDA tensor; on the CPU use 'eigvalsh' (LAPACK).")
        return batched_eigenvalues(a)
    if method == "eigvalsh" or a.shape[-1] <= 2 or a.shape[0] == 0:
        return torch.linalg.eigvalsh(a)
    if method == "householder_persistent":
        return tridiagonal_eigenvalues(*persistent.tridiagonalize_persistent(a))
    if method == "two_stage":
        # overwrite: a contiguous float64 batch of the caller's is worked on in place (no copy)
        # (in chunks on prioritised streams, to overlap one chunk's latency-bound bulge chase with the
        # next chunk's band reduction: slower, 43-51 against 32 ms for 320 matrices of 512 on an H200,
        # docs/gpu_evidence/lead_call2_h200_s33_console.txt)
        if TWO_STAGE_GRAPH and a.is_cuda and a.shape[0] >= TWO_STAGE_GRAPH_MIN_BATCH \
                and not torch.cuda.is_current_stream_capturing():
            return tridiagonal_eigenvalues(*_graphed(two_stage.tridiagonalize_two_stage, a, two_stage.settings()))
        return tridiagonal_eigenvalues(*two_stage.tridiagonalize_two_stage(a, copy=not overwrite))
    fn = {"householder_fused": tridiagonalize_fused, "householder_blocked": blocked.tridiagonalize_blocked}.get(
        method, tridiagonalize)
    d, e = _graphed(fn, a) if GRAPH and a.is_cuda and not torch.cuda.is_current_stream_capturing() else fn(a)
    return tridiagonal_eigenvalues(d, e)


#: Replay the tridiagonalisation on CUDA as one CUDA graph (about 7,700 kernels for n = 512: their
#: launches, not the GPU, set the eager loop's pace). One graph is kept, for the last
#: (function, shape, device): it holds a copy of the batch (0.67 GB for 320 matrices of 512 x 512).
GRAPH = True
#: The same for the two-stage reduction (method ``two_stage``) of batches of at least
#: :data:`TWO_STAGE_GRAPH_MIN_BATCH` matrices. On the GPU it gained nothing (33.8 against 34.4 ms for
#: 320 matrices of 512, session 30), but its ~600 launches took 19-25 ms of host time after a study-size
#: forward, and the host, which builds the frames meanwhile, finished after the GPU when the forward's
#: own launches ran late (attention_stats_bench --phases, docs/gpu_evidence/lead_call4_h200_s35_console.txt).
#: Costs a device copy of the batch per call (0.67 GB for 320 matrices of 512) and keeps the graph's
#: memory (the batch's copy and the reduction's buffers) until another shape or setting is solved,
#: or :func:`release_graphs`.
TWO_STAGE_GRAPH = True
TWO_STAGE_GRAPH_MIN_BATCH = 32
_GRAPHS: dict = {}


def release_graphs() -> None:
    """Drop the kept CUDA graph of a tridiagonalisation (:data:`GRAPH`, :data:`TWO_STAGE_GRAPH`) and
    the device memory it holds (the next solve of that shape captures it again)."""
    _GRAPHS.clear()


def _graphed(fn, a: torch.Tensor, settings: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(a)`` (a tridiagonalisation), captured once per (function, shape, device, ``settings``:
    the module settings the captured kernels depend on) as a CUDA graph working in place on a
    static copy of ``a``, then replayed."""
    key = (fn.__name__, tuple(a.shape), str(a.device), settings)
    entry = _GRAPHS.get(key)
    if entry is None:
        _GRAPHS.clear()  # the last shape only: each graph keeps its batch's memory
        static = a.double().contiguous().clone()
        side = torch.cuda.Stream(a.device)
        side.wait_stream(torch.cuda.current_stream(a.device))
        with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS workspaces, Triton compiles)
            fn(static.clone(), copy=False)
        torch.cuda.current_stream(a.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            d, e = fn(static, copy=False)
        entry = _GRAPHS[key] = (graph, static, d, e)
    graph, static, d, e = entry
    static.copy_(a)
    graph.replay()
    return d.clone(), e.clone()


def tridiagonalize(
    a: Float[torch.Tensor, "batch n n"], *, copy: bool = True,
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch n_minus_1"]]:
    """Diagonal ``d`` and off-diagonal ``e`` of a tridiagonal matrix orthogonally similar to each
    symmetric matrix of ``a`` (float64; ``a`` is not modified unless ``copy=False``, which
    overwrites a float64 ``a`` with intermediate values)."""
    a = a.double().clone() if copy or a.dtype != torch.float64 else a
    batch, n, _ = a.shape
    alphas = []
    for k in range(n - 2):  # ~15 kernels per column for the whole batch (host time matters here)
        x = a[:, k + 1 :, k]  # [batch, m]: the column below the diagonal
        alpha, v, tau = reflector(x)  # H x = alpha e1
        trailing = a[:, k + 1 :, k + 1 :]
        p = torch.bmm(trailing, (v * tau[:, None]).unsqueeze(-1)).squeeze(-1)  # tau A v
        w = torch.addcmul(p, v, (p * v).sum(dim=1, keepdim=True) * tau[:, None], value=-0.5)
        # A <- H A H = A - v w^T - w v^T
        trailing.baddbmm_(torch.stack((v, w), dim=-1), torch.stack((w, v), dim=-2), alpha=-1.0)
        alphas.append(alpha)
    if n >= 2:
        alphas.append(a[:, n - 1, n - 2])
    d = a.diagonal(dim1=1, dim2=2).clone()  # later steps never touch a column's diagonal again
    e = torch.stack(alphas, dim=1) if alphas else a.new_zeros(batch, 0)
    return d, e


def tridiagonalize_fused(
    a: Float[torch.Tensor, "batch n n"], *, copy: bool = True,
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch n_minus_1"]]:
    """:func:`tridiagonalize` with one pass over each trailing block per column instead of three.

    Each step's rank-2 update is deferred to the next step (LAPACK-style look-ahead): the next
    column is first corrected on its own (cheap), its Householder vector formed, and then one
    Triton kernel reads the trailing block once, applies the pending update, writes it back and
    forms the matrix-vector product with the new vector from the updated values. Needs Triton
    (CUDA tensors, or ``TRITON_INTERPRET=1``). ``spectrum_bench`` times it against
    :func:`tridiagonalize` (module docstring). ``copy=False`` works in place on a contiguous float64 ``a``.
    """
    kernel = _kernel()
    if kernel is None or not (a.is_cuda or _interpreting()):
        raise RuntimeError("tridiagonalize_fused needs Triton with CUDA tensors (or TRITON_INTERPRET=1); "
                           "use tridiagonalize.")
    if copy or a.dtype != torch.float64 or not a.is_contiguous():
        a = a.double().contiguous().clone()
    batch, n, _ = a.shape
    if n <= 2:
        return tridiagonalize(a, copy=False)
    diagonal, alphas = [], []
    v_prev = w_prev = None  # pending update of block a[k:, k:] (vectors of length n - k)
    for k in range(n - 2):
        column = a[:, k:, k]
        if v_prev is not None:
            column = column - v_prev * w_prev[:, :1] - w_prev * v_prev[:, :1]
        diagonal.append(column[:, 0])
        x = column[:, 1:]
        alpha, v, tau = reflector(x)  # H x = alpha e1
        m = n - k - 1
        if v_prev is None:
            pending_v = pending_w = torch.zeros_like(v)
        else:
            pending_v, pending_w = v_prev[:, 1:].contiguous(), w_prev[:, 1:].contiguous()
        p = torch.empty_like(v)
        grid = (batch, kernel.triton.cdiv(m, UPDATE_ROWS))
        with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
            kernel.update_matvec[grid](a, pending_v, pending_w, (v * tau[:, None]).contiguous(), p, n, k + 1, m,
                                       BLOCK_R=UPDATE_ROWS, BLOCK_C=UPDATE_COLUMNS, num_warps=UPDATE_WARPS)
        w = torch.addcmul(p, v, (p * v).sum(dim=1, keepdim=True) * tau[:, None], value=-0.5)
        v_prev, w_prev = v, w
        alphas.append(alpha)
    last = a[:, n - 2 :, n - 2 :] - v_prev[:, :, None] * w_prev[:, None, :] - w_prev[:, :, None] * v_prev[:, None, :]
    diagonal += [last[:, 0, 0], last[:, 1, 1]]
    alphas.append(last[:, 1, 0])
    return torch.stack(diagonal, dim=1), torch.stack(alphas, dim=1)


def _bounds(d: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gershgorin interval (widened as LAPACK ``dstebz`` does) and the pivot guard, per matrix."""
    n = d.shape[-1]
    radius = torch.zeros_like(d)
    radius[:, :-1] += e.abs()
    radius[:, 1:] += e.abs()
    low, high = (d - radius).amin(dim=-1), (d + radius).amax(dim=-1)
    e2 = e * e
    safe_min = torch.finfo(torch.float64).tiny
    pivmin = safe_min * torch.clamp(e2.amax(dim=-1) if e2.shape[-1] else torch.ones_like(low), min=1.0)
    norm = torch.maximum(low.abs(), high.abs())
    pad = 2.1 * torch.finfo(torch.float64).eps * norm * n + 4.0 * pivmin
    return low - pad, high + pad, pivmin


def tridiagonal_eigenvalues(
    d: Float[torch.Tensor, "batch n"], e: Float[torch.Tensor, "batch n_minus_1"],
) -> Float[torch.Tensor, "batch n"]:
    """Ascending eigenvalues of the symmetric tridiagonal matrices (diagonal ``d``, off-diagonal
    ``e``) by bisection on Sturm counts; float64, absolute accuracy ~ eps_float64 * ||T||."""
    d, e = d.double().contiguous(), e.double().contiguous()
    batch, n = d.shape
    if n == 0 or batch == 0:
        return d.clone()
    low, high, pivmin = _bounds(d, e)
    halvings = _halvings(low, high)
    e2 = torch.cat([e * e, e.new_zeros(batch, 1)], dim=1).contiguous()  # padded to n
    kernel = _kernel() if (d.is_cuda or _interpreting()) else None
    if kernel is not None:
        out = torch.empty_like(d)
        grid = (batch, kernel.triton.cdiv(n, BLOCK))
        single = _single_precision_stage(d, e, low, high, halvings)
        with torch.cuda.device(d.device) if d.is_cuda else contextlib.nullcontext():
            kernel.bisect[grid](d, e2, low.contiguous(), high.contiguous(), pivmin.contiguous(), halvings, out, n,
                                *single, BLOCK=BLOCK, HALVINGS_32=FLOAT32_HALVINGS,
                                FAST=bool(FAST_RECIPROCAL and d.is_cuda and not _interpreting()), num_warps=4)
        return out
    return _bisect_torch(d, e2, low, high, pivmin, halvings)


#: Halvings of the Triton bisection's float32 stage (0: float64 only). Each eigenvalue's interval is
#: first halved in float32 on the matrix scaled to norm <= 1, then widened by
#: :data:`FLOAT32_MARGIN` * eps_float32 on each side, checked with two float64 Sturm counts (an
#: interval that fails the check restarts from the Gershgorin bounds) and halved on in float64.
FLOAT32_HALVINGS = 22
FLOAT32_MARGIN = 32.0
#: The Sturm counts of the Triton bisection divide by each pivot as a multiplication by its
#: reciprocal: the hardware's approximation (``rcp.approx.ftz``) refined by one Newton step in float64
#: (``spectrum_kernels.reciprocal``), then fused into the subtraction. The IEEE division it replaces
#: is a dozen instructions with range checks and a call to a slow path, which keeps the compiler from
#: unrolling the float64 loop: per step of the recurrence 18.3 against 42 SASS instructions in float64
#: and 12.8 against 22.5 in float32 (sm_90, Triton 3.9). CUDA only (inline PTX); the interpreter and
#: ``False`` divide.
FAST_RECIPROCAL = True


def _single_precision_stage(d, e, low, high, halvings):
    """The float32 stage's inputs: ``d / s`` and ``(e / s)^2`` in float32 (s: the power of two at or
    above max(|low|, |high|)), s, the margin in float64 units, float32 bounds rounded outwards, and
    the float64 halvings left after the stage (int32 ``[batch]``, from the widened interval)."""
    norm = torch.maximum(low.abs(), high.abs())
    scale = torch.ldexp(torch.ones_like(norm), torch.frexp(norm)[1]).where(norm > 0, torch.ones_like(norm))
    d32 = (d / scale[:, None]).float().contiguous()
    e2_32 = torch.cat([(e / scale[:, None]) ** 2, e.new_zeros(e.shape[0], 1)], dim=1).float().contiguous()
    low32, high32 = (low / scale).float(), (high / scale).float()
    low32 = torch.where(low32.double() * scale > low, torch.nextafter(low32, torch.full_like(low32, -2.0)), low32)
    high32 = torch.where(high32.double() * scale < high, torch.nextafter(high32, torch.full_like(high32, 2.0)), high32)
    margin = FLOAT32_MARGIN * torch.finfo(torch.float32).eps * scale
    width = (high32 - low32).double() * scale / 2.0 ** FLOAT32_HALVINGS + 2 * margin
    left = _halvings(torch.zeros_like(width), width, reference=norm)
    return (d32, e2_32, low32.contiguous(), high32.contiguous(), scale.contiguous(), margin.contiguous(),
            torch.minimum(left, halvings).contiguous())


def _halvings(low: torch.Tensor, high: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Halvings of each matrix's interval until it is at most eps_float64 * max(|low|, |high|) wide
    (the resolution of the largest eigenvalue, below the Sturm count's own backward error): 53
    for the study's Gram matrices, at most :data:`N_HALVINGS`. ``reference``: the magnitude to
    take instead of max(|low|, |high|). int32 ``[batch]``."""
    reference = torch.maximum(low.abs(), high.abs()) if reference is None else reference
    tolerance = torch.finfo(torch.float64).eps * reference
    ratio = (high - low) / tolerance.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.log2(ratio.clamp(min=1.0)).ceil().clamp(1, N_HALVINGS).to(torch.int32).contiguous()


def _sturm_count(d, e2, x, pivmin):
    """Number of eigenvalues <= x (``x``: [batch, k]) for each matrix, LAPACK ``dlaebz``'s recurrence."""
    count = torch.zeros_like(x, dtype=torch.int64)
    q = d[:, :1] - x
    for j in range(d.shape[1]):
        if j:
            q = d[:, j : j + 1] - x - e2[:, j - 1 : j] / q
        q = torch.where(q.abs() < pivmin[:, None], -pivmin[:, None].expand_as(q), q)
        count += (q <= 0).long()
    return count


def _bisect_torch(d, e2, low, high, pivmin, halvings):
    batch, n = d.shape
    index = torch.arange(n, device=d.device)[None].expand(batch, n)
    lo, hi = low[:, None].expand(batch, n).clone(), high[:, None].expand(batch, n).clone()
    for step in range(int(halvings.max())):
        mid = 0.5 * (lo + hi)
        left = _sturm_count(d, e2, mid, pivmin) > index  # eigenvalue `index` is <= mid
        going = (step < halvings.to(d.device))[:, None]  # matrices still halving (as the kernel's loop)
        hi = torch.where(left & going, mid, hi)
        lo = torch.where(left | ~going, lo, mid)
    return 0.5 * (lo + hi)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _kernel():
    """The Triton kernels' module (:mod:`drope_lens.measurement.spectrum_kernels`) with ``triton``, or
    None without Triton."""
    try:
        import triton

        from drope_lens.measurement import spectrum_kernels
    except Exception:  # CPU builds of torch ship no Triton
        return None
    from types import SimpleNamespace

    return SimpleNamespace(triton=triton, bisect=spectrum_kernels.bisect, update_matvec=spectrum_kernels.update_matvec)
