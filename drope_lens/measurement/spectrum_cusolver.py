"""Eigenvalues of a batch of symmetric float64 matrices in one cuSOLVER call.

``cusolverDnXsyevBatched`` (cuSOLVER >= 11.7.1, CUDA >= 12.6.2) diagonalises a whole stack of
same-sized symmetric matrices in one call, for any n. PyTorch routes ``torch.linalg.eigvalsh`` to
a batched cuSOLVER routine only up to n = 32 and loops ``syevd`` one matrix at a time above that
(pytorch/pytorch#175585): 4.2 ms per 512 x 512 matrix on an H200, 1.34 s for one Exp 4 forward's
320 Gram matrices (``spectrum_bench``). This module calls the batched routine directly through
``ctypes`` on the cuSOLVER library that PyTorch already loaded, eigenvalues only
(``CUSOLVER_EIG_MODE_NOVECTOR``), on the current stream, with no host synchronisation: a matrix on
which the solver reports failure (``info != 0``) gets NaN eigenvalues instead of an exception, so
a deferred Exp 4 solve never stalls the host.

Status: first run on an H200 in session 27 (torch 2.11 + CUDA 13.0, ``libcusolver.so.12``): it
agrees with LAPACK (``tests/test_spectrum.py::test_cusolver_batched_matches_lapack``; max entropy
error 1.2e-11 in ``spectrum_bench``) and takes 98.9 ms for one Exp 4 forward's 320 Gram matrices,
against 95.1 ms for the default one-launch Householder path
(``docs/gpu_evidence/spectrum_bench_h200_s27.json``; 84.1 ms with session 28's launch setting,
``spectrum_bench_h200_s28.json``). It is ``method="cusolver_batched"`` of
:func:`drope_lens.measurement.spectrum.symmetric_eigenvalues`; ``"auto"`` does not choose it.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional

import torch
from jaxtyping import Float

# cuSOLVER / cuBLAS / CUDA library enums (cusolver_common.h, cublas_api.h, library_types.h)
CUSOLVER_EIG_MODE_NOVECTOR = 0
CUBLAS_FILL_MODE_LOWER = 0
CUDA_R_64F = 1
CUSOLVER_STATUS_SUCCESS = 0
#: The routine indexes the packed batch with 32-bit integers: n * n * batch must stay below this.
MAX_ELEMENTS = 2**31 - 1
_SONAMES = ("libcusolver.so.12", "libcusolver.so.11")


def _loaded_path() -> Optional[str]:
    """The path of the cuSOLVER library mapped into this process (PyTorch's own copy), if any."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if os.path.basename(path).startswith("libcusolver.so"):
                    return path
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def _library() -> Optional[ctypes.CDLL]:
    """cuSOLVER with ``cusolverDnXsyevBatched``, or None (no CUDA, or a cuSOLVER without it)."""
    if not torch.cuda.is_available():
        return None
    # cuSOLVER is loaded lazily by PyTorch: one tiny solve maps it into the process.
    torch.linalg.cholesky(torch.eye(1, dtype=torch.float64, device="cuda"))
    candidates = [p for p in (_loaded_path(),) if p] + list(_SONAMES)
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
            lib.cusolverDnXsyevBatched  # noqa: B018 - AttributeError when this cuSOLVER predates it
            lib.cusolverDnXsyevBatched_bufferSize  # noqa: B018
        except (OSError, AttributeError):
            continue
        _declare(lib)
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
    lib.cusolverDnCreate.argtypes = [ctypes.POINTER(p)]
    lib.cusolverDnSetStream.argtypes = [p, p]
    lib.cusolverDnCreateParams.argtypes = [ctypes.POINTER(p)]
    lib.cusolverDnXsyevBatched_bufferSize.argtypes = [
        p, p, i32, i32, i64, i32, p, i64, i32, p, i32, ctypes.POINTER(size), ctypes.POINTER(size), i64]
    lib.cusolverDnXsyevBatched.argtypes = [
        p, p, i32, i32, i64, i32, p, i64, i32, p, i32, p, size, p, size, p, i64]
    for fn in (lib.cusolverDnCreate, lib.cusolverDnSetStream, lib.cusolverDnCreateParams,
               lib.cusolverDnXsyevBatched_bufferSize, lib.cusolverDnXsyevBatched):
        fn.restype = ctypes.c_int


def available() -> bool:
    """Whether this process can call ``cusolverDnXsyevBatched``."""
    return _library() is not None


def _check(status: int, what: str) -> None:
    if status != CUSOLVER_STATUS_SUCCESS:
        raise RuntimeError(f"{what} returned cuSOLVER status {status}.")


@functools.lru_cache(maxsize=None)
def _handle(device_index: int) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
    """One cuSOLVER handle and parameter object per GPU, created on that GPU, kept for the process."""
    lib = _library()
    handle, params = ctypes.c_void_p(), ctypes.c_void_p()
    with torch.cuda.device(device_index):
        _check(lib.cusolverDnCreate(ctypes.byref(handle)), "cusolverDnCreate")
        _check(lib.cusolverDnCreateParams(ctypes.byref(params)), "cusolverDnCreateParams")
    return handle, params


_HOST_WORKSPACES: dict[int, ctypes.Array] = {}  # kept alive: the solver may read them after returning


def batched_eigenvalues(a: Float[torch.Tensor, "batch n n"]) -> Float[torch.Tensor, "batch n"]:
    """Ascending eigenvalues (float64) of each symmetric ``[n, n]`` CUDA matrix of ``a``, from the
    lower triangle (of the column-major view, that is the upper triangle of ``a`` as stored: the
    matrices must be symmetric). ``a`` is not modified. NaN rows mark matrices the solver failed on."""
    lib = _library()
    if lib is None:
        raise RuntimeError("cusolverDnXsyevBatched is not available here (it needs CUDA and cuSOLVER >= 11.7.1).")
    if a.ndim != 3 or a.shape[-1] != a.shape[-2] or not a.is_cuda:
        raise ValueError(f"a must be a CUDA tensor [batch, n, n]; got {tuple(a.shape)} on {a.device}.")
    batch, n = a.shape[0], a.shape[-1]
    eigenvalues = torch.empty(batch, n, dtype=torch.float64, device=a.device)
    if batch == 0 or n == 0:
        return eigenvalues
    per_call = max(1, MAX_ELEMENTS // (n * n))
    handle, params = _handle(a.device.index if a.device.index is not None else torch.cuda.current_device())
    with torch.cuda.device(a.device):
        stream = torch.cuda.current_stream(a.device)
        _check(lib.cusolverDnSetStream(handle, ctypes.c_void_p(stream.cuda_stream)), "cusolverDnSetStream")
        for start in range(0, batch, per_call):
            stop = min(batch, start + per_call)
            work = a[start:stop].to(torch.float64).contiguous().clone()  # overwritten by the solver
            w = eigenvalues[start:stop]
            info = torch.zeros(stop - start, dtype=torch.int32, device=a.device)
            device_bytes, host_bytes = ctypes.c_size_t(), ctypes.c_size_t()
            _check(lib.cusolverDnXsyevBatched_bufferSize(
                handle, params, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F,
                ctypes.c_void_p(work.data_ptr()), n, CUDA_R_64F, ctypes.c_void_p(w.data_ptr()), CUDA_R_64F,
                ctypes.byref(device_bytes), ctypes.byref(host_bytes), stop - start),
                "cusolverDnXsyevBatched_bufferSize")
            device_buffer = torch.empty(max(1, device_bytes.value), dtype=torch.uint8, device=a.device)
            host_buffer = None
            if host_bytes.value:
                host_buffer = _HOST_WORKSPACES.get(host_bytes.value)
                if host_buffer is None:
                    host_buffer = _HOST_WORKSPACES[host_bytes.value] = ctypes.create_string_buffer(host_bytes.value)
            _check(lib.cusolverDnXsyevBatched(
                handle, params, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F,
                ctypes.c_void_p(work.data_ptr()), n, CUDA_R_64F, ctypes.c_void_p(w.data_ptr()), CUDA_R_64F,
                ctypes.c_void_p(device_buffer.data_ptr()), device_bytes.value,
                ctypes.cast(host_buffer, ctypes.c_void_p) if host_buffer is not None else None, host_bytes.value,
                ctypes.c_void_p(info.data_ptr()), stop - start), "cusolverDnXsyevBatched")
            # the caching allocator keeps these blocks for this stream's later work only: the solver
            # (queued on the same stream) is done with them before anything else can reuse them
            w.masked_fill_(info.ne(0)[:, None], float("nan"))
    return eigenvalues
