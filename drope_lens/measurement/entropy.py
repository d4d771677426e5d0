"""Representation entropy of ``[pos, d_model]`` matrices (Exp 4) from their Gram matrices.

For a matrix X with singular values s (Queipo-de-Llano et al. 2025), two normalisations:
``repr_entropy`` with p = s^2 / sum s^2, H = -sum p ln p (nats); ``repr_entropy_norm`` with
p = s / sum s, H / ln(rank) (in [0, 1]; rank = number of s above ``max(s) * max(T, d) *
eps_float32``). s come from the eigenvalues of the smaller Gram matrix (float64), solved in
batches by :func:`drope_lens.measurement.spectrum.symmetric_eigenvalues`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import numpy as np
import torch
from jaxtyping import Float

from drope_lens.measurement.deferred import DeferredCapture
from drope_lens.measurement.spectrum import symmetric_eigenvalues


#: :func:`gram_matrix` of X X^T splits X's rows into this many blocks and computes only the block
#: columns on and below the diagonal, one batched product each (X_{j:} X_j^T), then mirrors them:
#: (k + 1) / 2k of one full product's float64 multiply-adds (2: 3/4, 4: 5/8). For ``pos`` divisible
#: by k and at least :data:`BLOCKS_MIN_POS`; 1: one full product. H200, 32 layers of [10, 512, 4096]
#: bfloat16 (conversions included, medians of 15): 1 block 14.00 ms, 2 blocks 13.15 ms, 4 blocks
#: 14.89 ms, the same bits (docs/gpu_evidence/lead_call3_h200_s33_console.txt).
GRAM_BLOCKS = 2
BLOCKS_MIN_POS = 256
#: On CUDA (or under ``TRITON_INTERPRET=1``) with Triton, :func:`gram_matrix` runs one Triton kernel
#: (:mod:`drope_lens.measurement.gram_kernel`) instead of the blocks above: only the tiles on and
#: below the diagonal, from X in its own dtype (no float64 copy of X), float64 ``tl.dot``;
#: ``GRAM_TILE`` x ``GRAM_TILE`` tiles over ``GRAM_TILE_K`` columns per step (at least 32: Triton 3.6
#: needs 16 per dot, bfloat16 pairs halve it), ``GRAM_WARPS`` warps, ``GRAM_STAGES`` stages. H200,
#: Triton 3.6, 32 layers of [10, 512, 4096] bfloat16, medians of 11 interleaved rounds: cuBLAS blocks
#: 13.34 ms; tiles 32 x 32 with 2 warps 7.92 ms, 64 x 32 with 4 warps 8.70-9.04 ms, 64 x 32 with 8
#: warps 16.01 ms; every one within 1.4e-19 of the largest entry of cuBLAS's. In row 1 side by side:
#: 156.8 ms (32-tiles) against 162.4 ms (cuBLAS) (docs/gpu_evidence/lead_call1_h200_s36_console.txt).
TRITON_GRAM = True
GRAM_TILE, GRAM_TILE_K, GRAM_WARPS, GRAM_STAGES = 32, 32, 2, 3


def gram_matrix(
    x: Float[torch.Tensor, "batch pos d_model"], *, out: Optional[torch.Tensor] = None,
) -> Float[torch.Tensor, "batch m m"]:
    """The smaller Gram matrix of each ``[pos, d_model]`` matrix X in float64: X X^T
    (``m = pos``) or X^T X (``m = d_model``); its eigenvalues are the squared singular values of X.
    On CUDA with Triton, X X^T comes from one kernel (:data:`TRITON_GRAM`), elsewhere from float64
    products, in blocks (:data:`GRAM_BLOCKS`) where they apply; both are exactly symmetric then.
    ``out``: a contiguous float64 ``[batch, m, m]`` tensor to write it into (returned)."""
    m = min(x.shape[-2:])
    if out is not None and (out.shape != (*x.shape[:-2], m, m) or out.dtype != torch.float64
                            or not out.is_contiguous()):
        raise ValueError(f"out has shape {tuple(out.shape)} ({out.dtype}): expected a contiguous float64 "
                         f"{(*x.shape[:-2], m, m)}.")
    if x.ndim == 3 and _triton_gram(x):
        return _gram_triton(x, out)
    x64 = x.double()
    if x.shape[-2] > x.shape[-1]:
        return torch.matmul(x64.mT, x64, out=out)
    n, k = x.shape[-2], GRAM_BLOCKS
    if k <= 1 or n < BLOCKS_MIN_POS or n % k or x64.ndim != 3:
        return torch.matmul(x64, x64.mT, out=out)
    b = n // k
    gram = x64.new_empty(x64.shape[0], n, n) if out is None else out
    for j in range(k):  # block column j on and below the diagonal: strided views, no copies of X
        column = slice(j * b, (j + 1) * b)
        gram[:, j * b:, column] = torch.bmm(x64[:, j * b:], x64[:, column].mT)
    for j in range(k - 1):  # the blocks right of the diagonal block, mirrored from below it
        gram[:, j * b:(j + 1) * b, (j + 1) * b:] = gram[:, (j + 1) * b:, j * b:(j + 1) * b].mT
    return gram


def _triton_gram(x: torch.Tensor) -> bool:
    """Whether :func:`gram_matrix` runs the Triton kernel for X: X X^T (``pos <= d_model``; X^T X, for
    texts longer than d_model, keeps the cuBLAS product: not timed with the kernel)."""
    return (TRITON_GRAM and x.shape[-2] <= x.shape[-1]
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64)
            and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1") and _gram_kernel() is not None)


def _gram_triton(x: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    """X X^T of a ``[batch, pos, d_model]`` X (``pos <= d_model``) by :func:`gram_kernel.gram_lower_tiles`:
    bfloat16 rows with contiguous, even d_model as int32 pairs (the kernel's ``BF16_PAIRS``), other
    16-bit inputs through one float32 copy (exact), float32 and float64 as they are."""
    batch, n, k = x.shape
    gram = torch.empty(batch, n, n, dtype=torch.float64, device=x.device) if out is None else out
    if batch == 0 or n == 0:
        return gram
    if x.dtype in (torch.bfloat16, torch.float16) and not _as_pairs(x):
        x = x.float()
    pairs = x.dtype == torch.bfloat16
    if GRAM_TILE_K < (32 if pairs else 16) or GRAM_TILE_K & (GRAM_TILE_K - 1):
        raise ValueError(f"entropy.GRAM_TILE_K={GRAM_TILE_K}: must be a power of two of at least "
                         f"{32 if pairs else 16} for {x.dtype} (tl.dot takes 16 or more columns per step).")
    y = x.view(torch.int32) if pairs else x
    kernel = _gram_kernel()
    tiles = kernel.triton.cdiv(n, GRAM_TILE)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel.gram_lower_tiles[(tiles * (tiles + 1) // 2, batch)](
            y, gram, n, k // 2 if pairs else k, y.stride(0), y.stride(1), y.stride(2), BLOCK=GRAM_TILE,
            BLOCK_K=GRAM_TILE_K // 2 if pairs else GRAM_TILE_K, BF16_PAIRS=pairs,
            num_warps=GRAM_WARPS, num_stages=GRAM_STAGES)
    return gram


def _as_pairs(x: torch.Tensor) -> bool:
    """Whether bfloat16 X (X X^T) can be read as int32 words of two values along d_model."""
    return (x.dtype == torch.bfloat16 and x.shape[-1] % 2 == 0 and x.stride(2) == 1
            and x.stride(1) % 2 == 0 and x.stride(0) % 2 == 0 and x.data_ptr() % 4 == 0)


@functools.lru_cache(maxsize=None)
def _gram_kernel():
    """The Triton Gram kernel's module, or None without Triton."""
    try:
        from drope_lens.measurement import gram_kernel
    except Exception:  # CPU builds of torch ship no Triton
        return None
    return gram_kernel


def entropies_from_gram(
    gram: Float[torch.Tensor, "batch m m"], n_pos: int, width: int, *, overwrite: bool = False,
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """:func:`representation_entropy` of matrices of shape ``[n_pos, width]`` from their
    :func:`gram_matrix` (any number at once: one batched eigenvalue computation; ``overwrite``: the
    solver may work in place on ``gram``)."""
    return entropies_from_spectrum(symmetric_eigenvalues(gram, overwrite=overwrite), n_pos, width)


def entropies_from_spectrum(
    eig: Float[torch.Tensor, "batch m"], n_pos: int, width: int,
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """Both entropies of :func:`representation_entropy` from the Gram eigenvalues ``eig`` (= s^2)."""
    eig = eig.double().clamp(min=0)  # rounding can make zeros slightly negative
    s = eig.sqrt()
    energy = eig / eig.sum(dim=-1, keepdim=True)
    h_energy = -torch.where(energy > 0, energy * energy.log(), torch.zeros_like(energy)).sum(dim=-1)
    share = s / s.sum(dim=-1, keepdim=True)
    h_share = -torch.where(share > 0, share * share.log(), torch.zeros_like(share)).sum(dim=-1)
    tolerance = s.amax(dim=-1, keepdim=True) * max(n_pos, width) * torch.finfo(torch.float32).eps
    rank = (s > tolerance).sum(dim=-1).double()
    normalized = torch.where(rank > 1, h_share / rank.clamp(min=2).log(), torch.zeros_like(h_share))
    return h_energy, normalized


def representation_entropy(
    x: Float[torch.Tensor, "batch pos d_model"],
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """``(H with p = s^2/sum s^2 in nats, H with p = s/sum s divided by ln(rank))`` per row (float64).

    s are the singular values of each ``[pos, d_model]`` matrix X. They are computed as the square
    roots of the eigenvalues of the smaller Gram matrix (X X^T, ``[pos, pos]``, or X^T X) in float64,
    batched: the same spectrum as an SVD (tested against ``torch.linalg.svdvals`` in float64 to 1e-6)
    at a fraction of its cost (one GEMM and one symmetric eigenvalue problem of size min(pos, d);
    on CUDA :func:`drope_lens.measurement.spectrum.symmetric_eigenvalues` solves a batch together).
    ``rank`` counts s above ``max(s) * max(pos, d_model) * eps_float32``, as for a float32 SVD.
    """
    return entropies_from_gram(gram_matrix(x), *x.shape[-2:])


#: The per-layer columns Exp 4's frames take from :func:`representation_entropy`.
ENTROPY_COLUMNS = ("repr_entropy", "repr_entropy_norm")


def entropy_table(per_layer: dict, n_layers: int) -> np.ndarray:
    """``{layer: (repr_entropy, repr_entropy_norm)}`` (``[batch]`` tensors, layers 0 .. n_layers - 1)
    as one float64 ``[2, n_layers, batch]`` array."""
    return np.stack([np.stack([per_layer[layer][i].detach().cpu().double().numpy() for layer in range(n_layers)])
                     for i in range(len(ENTROPY_COLUMNS))])


def per_head_entropies(table, n_heads: int) -> dict[str, np.ndarray]:
    """:data:`ENTROPY_COLUMNS` for rows in (sample, layer, head) order from a ``[2, layer, batch]``
    table, each layer's value repeated on its heads: float32 values as float64, as
    :func:`drope_lens.engine.measure.per_head_values` gives a frame's other columns. In NumPy: on CUDA
    this runs after the device's last work, so its host time adds to the call's."""
    return {name: np.repeat(np.asarray(table[i]).T.astype(np.float32), n_heads, axis=1).reshape(-1).astype(np.float64)
            for i, name in enumerate(ENTROPY_COLUMNS)}


#: Gram matrices of one forward kept for a batched solve, at most this many bytes (10 texts x 512
#: tokens x 32 layers: 0.67 GB); larger ones (long texts) are solved layer by layer as they come.
DEFER_GRAM_BYTES = 2 * 2**30


class DeferredEntropies(DeferredCapture):
    """Gram matrices of one forward's layers (:func:`gram_matrix`), solved after the forward.

    ``add(layer, gram, (n_pos, width))`` keeps a layer's Gram matrix; ``launch()`` solves them in
    one batched :func:`entropies_from_gram` call per (device, shape) (asynchronous on CUDA) and
    starts ONE non-blocking copy of all the entropies per device into pinned host memory;
    ``result()`` waits for that copy and returns ``{layer: (repr_entropy, repr_entropy_norm)}``,
    float64 ``[batch]`` CPU tensors; ``table(n_layers)`` / ``entropy_table(n_layers)`` give them as one
    ``[2, n_layers, batch]`` view / array. ``slot(batch, m, device)`` hands out the next
    ``[batch, m, m]`` slice of one float64 buffer for ``n_layers`` layers (allocated on first use):
    Gram matrices written there (:func:`gram_matrix`'s ``out``) and added in slot order are solved in
    place, with no ``torch.cat`` of the layers (a copy of 0.67 GB at the study's size). (Solving the
    first layers during the forward, on a side stream, was slower on an H200: row 1 177.0-180.3
    against 170.3 ms, the forward's GEMMs slowed down; docs/gpu_evidence/lead_call1_h200_s33_console.txt.)
    """

    def __init__(self, n_layers: int = 0) -> None:
        self._grams: list[tuple[int, torch.Tensor, tuple[int, int]]] = []
        self._copies: Optional[list] = None  # per device: (host buffer, event or None, [(layer, start, n)])
        self._n_layers = n_layers
        self._buffer: Optional[torch.Tensor] = None  # [n_layers * batch, m, m] float64, see slot()
        self._slots = 0  # slices of the buffer handed out

    def slot(self, batch: int, m: int, device) -> Float[torch.Tensor, "batch m m"]:
        """The next ``[batch, m, m]`` float64 slice of the layers' shared buffer (a fresh tensor once
        the buffer is full or for another shape or device)."""
        if self._buffer is None and self._n_layers > 0 and self._copies is None:
            self._buffer = torch.empty(self._n_layers * batch, m, m, dtype=torch.float64, device=device)
        buffer = self._buffer
        if (buffer is None or self._slots >= self._n_layers or buffer.shape[1:] != (m, m)
                or buffer.shape[0] != self._n_layers * batch or buffer.device != torch.device(device)):
            return torch.empty(batch, m, m, dtype=torch.float64, device=device)
        self._slots += 1
        return buffer[(self._slots - 1) * batch: self._slots * batch]

    def add(self, layer: int, gram: Float[torch.Tensor, "batch m m"], shape: tuple[int, int]) -> None:
        if self._copies is not None:
            raise RuntimeError(f"layer {layer}: DeferredEntropies was already launched; add Gram matrices before.")
        self._grams.append((int(layer), gram, tuple(shape)))

    def launch(self) -> None:
        if self._copies is not None:
            return
        groups: dict = {}
        for layer, gram, shape in self._grams:
            groups.setdefault((gram.device, shape), []).append((layer, gram))
        per_device: dict = {}
        for (device, shape), members in groups.items():
            batch = self._buffer if self._filled_in_order(members) else torch.cat([gram for _, gram in members])
            h_energy, h_norm = entropies_from_gram(batch, *shape, overwrite=True)
            per_device.setdefault(device, []).append(([layer for layer, _ in members], torch.stack([h_energy, h_norm])))
        self._grams = []  # the Gram matrices are no longer needed once the solves are queued
        self._buffer = None
        self._copies = []
        for device, parts in per_device.items():
            values = torch.cat([stacked for _, stacked in parts], dim=1) if len(parts) > 1 else parts[0][1]
            pinned = device.type == "cuda"
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=pinned)
            host.copy_(values, non_blocking=pinned)
            event = None
            if pinned:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
            index, start = [], 0
            for layers, stacked in parts:
                n = stacked.shape[1] // len(layers)
                for layer in layers:
                    index.append((layer, start, n))
                    start += n
            self._copies.append((host, event, index))

    def _filled_in_order(self, members: list) -> bool:
        """Whether ``members`` (layer, gram) are the buffer's slots, every one, in order (then the
        buffer is the batch: solved in place, the slots' values are not needed afterwards)."""
        buffer = self._buffer
        if buffer is None or len(members) != self._n_layers or self._slots != self._n_layers:
            return False
        step = buffer.shape[0] // self._n_layers
        return all(gram.data_ptr() == buffer[i * step].data_ptr() and gram.shape[0] == step
                   for i, (_, gram) in enumerate(members))

    def entropy_table(self, n_layers: int) -> np.ndarray:
        """The solved entropies of layers 0 .. n_layers - 1 as one float64 ``[2, n_layers, batch]``
        array (:meth:`table`'s view when it has one, else stacked from :meth:`result`)."""
        table = self.table(n_layers)
        return table.numpy() if table is not None else entropy_table(self.result(), n_layers)

    def table(self, n_layers: int) -> Optional[torch.Tensor]:
        """``result()`` as one float64 ``[2, n_layers, batch]`` CPU tensor (repr_entropy, then
        repr_entropy_norm; a view of the host copy) when the layers solved are 0 .. n_layers - 1, in
        order, in one batch; else None. Waits for the copy as ``result()`` does, without its 2 x
        n_layers tensor views (host time, spent after the device's last work)."""
        if self._copies is None:
            self.launch()
        if len(self._copies) != 1:
            return None
        host, event, index = self._copies[0]
        if [layer for layer, _, _ in index] != list(range(n_layers)) or len({n for _, _, n in index}) != 1:
            return None
        if event is not None:
            event.synchronize()
        return host.view(2, n_layers, -1)

    def result(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        if self._copies is None:
            self.launch()
        out = {}
        for host, event, index in self._copies:
            if event is not None:
                event.synchronize()
            for layer, start, n in index:
                out[layer] = (host[0, start: start + n], host[1, start: start + n])
        return out
