"""Batched symmetric eigenvalues (drope_lens.measurement.spectrum) against LAPACK's ``eigvalsh`` in float64."""

import os

import pytest
import torch

from drope_lens.measurement import spectrum, spectrum_blocked

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_kernel = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()) or spectrum._kernel() is None,
    reason="the bisection kernel needs CUDA and Triton, or TRITON_INTERPRET=1 with Triton installed",
)


def _matrices(seed: int) -> list[torch.Tensor]:
    """Gram matrices with a dominant (massive) row, a rank-deficient one, an indefinite one, zeros, tiny n."""
    g = torch.Generator().manual_seed(seed)
    spiky = torch.randn(3, 48, 64, generator=g, dtype=torch.float64)
    spiky[:, 0] *= 50.0
    low = torch.randn(2, 40, 5, generator=g, dtype=torch.float64)
    indefinite = torch.randn(2, 30, 30, generator=g, dtype=torch.float64)
    out = [spiky @ spiky.mT, low @ low.mT, indefinite + indefinite.mT, torch.zeros(2, 9, 9, dtype=torch.float64)]
    for n in (1, 2, 3):
        x = torch.randn(2, n, 4, generator=g, dtype=torch.float64)
        out.append(x @ x.mT)
    return out


def _check(got: torch.Tensor, a: torch.Tensor) -> None:
    want = torch.linalg.eigvalsh(a)
    scale = a.flatten(1).abs().amax(dim=1).clamp(min=1e-200)[:, None]  # zero matrices: absolute
    torch.testing.assert_close((got.cpu() - want) / scale, torch.zeros_like(want), rtol=0, atol=1e-13 * a.shape[-1])


def test_bisection_stops_at_float64_resolution():
    """Each matrix halves its interval until it is eps_float64 * max|bound| wide: fewer halvings than
    the cap for a Gram-like matrix (about 53), at least one for a zero matrix."""
    x = torch.randn(2, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[:, 0] *= 100.0
    a = torch.cat([x @ x.mT, torch.zeros(1, 64, 64, dtype=torch.float64)])
    d, e = spectrum.tridiagonalize(a)
    low, high, _ = spectrum._bounds(d, e)
    halvings = spectrum._halvings(low, high)
    assert halvings.dtype == torch.int32 and bool((halvings[:2] >= 50).all()) and bool((halvings[:2] <= 55).all())
    assert 1 <= int(halvings[2]) < 50
    width = (high - low) / 2.0 ** halvings.double()  # each matrix's final interval
    assert bool((width[:2] <= torch.finfo(torch.float64).eps * torch.maximum(low.abs(), high.abs())[:2]).all())
    assert bool((2 * width[:2] > torch.finfo(torch.float64).eps * torch.maximum(low.abs(), high.abs())[:2]).all())
    _check(spectrum.tridiagonal_eigenvalues(d, e), a)


def test_householder_and_bisection_match_lapack():
    for a in _matrices(0):
        _check(spectrum.symmetric_eigenvalues(a, method="householder"), a)
        for block in (1, 5, 32):  # panels of one column, panels that do not divide n, one panel
            d, e = spectrum_blocked.tridiagonalize_blocked(a, block=block)
            t = torch.diag_embed(d) + torch.diag_embed(e, offset=1) + torch.diag_embed(e, offset=-1)
            _check(torch.linalg.eigvalsh(t), a)
        d, e = spectrum.tridiagonalize(a)
        if a.shape[-1] > 1:  # the tridiagonal matrix is orthogonally similar: same spectrum
            t = torch.diag_embed(d) + torch.diag_embed(e, offset=1) + torch.diag_embed(e, offset=-1)
            _check(torch.linalg.eigvalsh(t), a)


@needs_kernel
def test_bisection_kernel_matches_lapack():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for a in _matrices(1):
        for method in ("householder", "householder_fused", "householder_persistent", "householder_blocked",
                       "two_stage"):
            _check(spectrum.symmetric_eigenvalues(a.to(device), method=method), a)
    if torch.cuda.is_available():  # the study's size: 512 x 512, more than one block of eigenvalues
        x = torch.randn(4, 512, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        x[:, 0] *= 100.0
        a = x @ x.mT
        for method in ("auto", "householder_fused", "householder_persistent", "householder_blocked", "two_stage"):
            _check(spectrum.symmetric_eigenvalues(a.cuda(), method=method), a)


@needs_kernel
@pytest.mark.parametrize("halvings_32,margin", [(0, 32.0), (22, 32.0), (22, 0.0), (22, -1e6), (40, 32.0)])
def test_float32_stage_of_the_bisection_keeps_float64_accuracy(halvings_32, margin, monkeypatch):
    """The kernel's float32 halvings, checked by float64 counts: LAPACK's spectrum without them, with
    them, with no margin (intervals that may miss their eigenvalue), with a margin that inverts every
    interval (each check fails: the float64 halvings restart from the Gershgorin bounds) and with more
    float32 halvings than float32 resolves; a Gram matrix with a massive row, an indefinite one,
    zeros."""
    monkeypatch.setattr(spectrum, "FLOAT32_HALVINGS", halvings_32)
    monkeypatch.setattr(spectrum, "FLOAT32_MARGIN", margin)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for k in (0, 2, 3):
        a = _matrices(4)[k]
        d, e = spectrum.tridiagonalize(a)
        _check(spectrum.tridiagonal_eigenvalues(d.to(device), e.to(device)), a)


def _hard_tridiagonals() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(d, e) batches that stress the Sturm recurrence: Wilkinson's W+ (pairs of eigenvalues equal to
    many digits), zero and tiny off-diagonals (split and nearly split matrices, pivots at the guard),
    integer diagonals (bisection midpoints on a diagonal entry), entries from 1e-120 to 1e120, zeros."""
    out = []
    m = 10  # W21+: d = |10 - i|, e = 1
    d = torch.tensor([abs(m - i) for i in range(2 * m + 1)], dtype=torch.float64)
    out.append((d[None], torch.ones(1, 2 * m, dtype=torch.float64)))
    g = torch.Generator().manual_seed(11)
    d = torch.randn(3, 40, generator=g, dtype=torch.float64)
    e = torch.randn(3, 39, generator=g, dtype=torch.float64)
    e[0, ::3] = 0.0
    e[1] *= 1e-150
    e[2, 5:] = 1e-300
    out.append((d, e))
    out.append((torch.arange(24, dtype=torch.float64).remainder(5)[None].repeat(2, 1),
                torch.tensor([0.0, 1.0]).repeat(12)[:23][None].repeat(2, 1).double()))
    for scale in (1e-120, 1e120):
        out.append((torch.randn(2, 33, generator=g, dtype=torch.float64) * scale,
                    torch.randn(2, 32, generator=g, dtype=torch.float64) * scale))
    out.append((torch.zeros(1, 17, dtype=torch.float64), torch.zeros(1, 16, dtype=torch.float64)))
    return out


@needs_kernel
@pytest.mark.parametrize("fast", [True, False])
def test_bisection_kernel_on_hard_tridiagonals(fast, monkeypatch):
    """The kernel's Sturm counts, with the pivots' reciprocals approximated and refined (``fast``, on
    CUDA) and with IEEE division: LAPACK's eigenvalues of matrices that push the recurrence to its
    guard and its range (:func:`_hard_tridiagonals`), and of the study's kind of Gram matrix."""
    monkeypatch.setattr(spectrum, "FAST_RECIPROCAL", fast)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for d, e in _hard_tridiagonals():
        t = torch.diag_embed(d) + torch.diag_embed(e, offset=1) + torch.diag_embed(e, offset=-1)
        _check(spectrum.tridiagonal_eigenvalues(d.to(device), e.to(device)), t)
    x = torch.randn(3, 200, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[:, 0] *= 300.0
    a = x @ x.mT
    d, e = spectrum.tridiagonalize(a)
    _check(spectrum.tridiagonal_eigenvalues(d.to(device), e.to(device)), a)


def test_float32_stage_leaves_fewer_float64_halvings():
    """After 22 float32 halvings a Gram matrix's intervals need about 36 float64 halvings instead of 53."""
    x = torch.randn(2, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[:, 0] *= 100.0
    d, e = spectrum.tridiagonalize(x @ x.mT)
    low, high, _ = spectrum._bounds(d, e)
    halvings = spectrum._halvings(low, high)
    *_, scale, margin, left = spectrum._single_precision_stage(d, e, low, high, halvings)
    assert bool((scale >= torch.maximum(low.abs(), high.abs())).all()) and bool((scale < 2 * torch.maximum(low.abs(), high.abs())).all())
    assert bool((left < halvings - 12).all()) and bool((left >= 30).all())


@pytest.mark.skipif(INTERPRET, reason="the interpreter runs the kernel on CPU tensors")
def test_fused_tridiagonalization_needs_triton_on_cuda():
    for a in (torch.eye(4, dtype=torch.float64)[None],):  # CPU tensors: no kernel outside the interpreter
        with pytest.raises(RuntimeError, match="needs Triton"):
            spectrum.tridiagonalize_fused(a)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method='svd'"):
        spectrum.symmetric_eigenvalues(torch.eye(3)[None], method="svd")
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        spectrum.symmetric_eigenvalues(torch.zeros(3, 4))


def test_in_place_tridiagonalization_equals_the_copying_one():
    a = _matrices(6)[0]
    d, e = spectrum.tridiagonalize(a)
    d2, e2 = spectrum.tridiagonalize(a.clone(), copy=False)
    assert torch.equal(d, d2) and torch.equal(e, e2)


@pytest.mark.skipif(not torch.cuda.is_available() or spectrum._kernel() is None, reason="CUDA graphs need CUDA")
def test_cuda_graph_replays_follow_new_inputs():
    """One capture per (method, shape), then replays on other matrices of that shape: each answer
    is the new matrices' spectrum (the graph reads a static copy refreshed every call)."""
    for method in ("householder", "householder_fused"):
        for seed in (3, 4, 5):
            x = torch.randn(6, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            x[:, 0] *= 30.0 * seed
            a = x @ x.mT
            _check(spectrum.symmetric_eigenvalues(a.cuda(), method=method), a)
        assert len(spectrum._GRAPHS) == 1


@pytest.mark.skipif(not torch.cuda.is_available() or spectrum._kernel() is None, reason="CUDA graphs need CUDA")
def test_two_stage_graph_follows_new_inputs_and_settings(monkeypatch):
    """The two-stage reduction of a batch of at least TWO_STAGE_GRAPH_MIN_BATCH matrices is replayed
    as one CUDA graph: each answer is the new matrices' spectrum, and a changed module setting of
    spectrum_two_stage captures a new graph (the kernels it launches differ) instead of replaying."""
    from drope_lens.measurement import spectrum_two_stage as two_stage

    spectrum._GRAPHS.clear()
    batch = max(spectrum.TWO_STAGE_GRAPH_MIN_BATCH, 2)
    for update in (True, False):
        monkeypatch.setattr(two_stage, "FUSED_UPDATE", update)
        for seed in (3, 4):
            x = torch.randn(batch, 48, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            x[:, 0] *= 30.0 * seed
            a = x @ x.mT
            _check(spectrum.symmetric_eigenvalues(a.cuda(), method="two_stage"), a)
        assert [key[3] for key in spectrum._GRAPHS] == [two_stage.settings()]
    spectrum.release_graphs()
    assert not spectrum._GRAPHS


@needs_kernel
def test_persistent_tridiagonalization_reads_only_the_upper_triangle_and_keeps_its_input():
    """The one-launch kernel works on a copy, reads the upper triangle only (garbage below the
    diagonal changes nothing) and refuses sizes it does not handle."""
    from drope_lens.measurement.spectrum_persistent import MAX_N, tridiagonalize_persistent

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 21, 30, generator=g, dtype=torch.float64)
    a = (x @ x.mT).to(device)
    kept = a.clone()
    d, e = tridiagonalize_persistent(a)
    assert torch.equal(a, kept)
    t = torch.diag_embed(d) + torch.diag_embed(e, offset=1) + torch.diag_embed(e, offset=-1)
    _check(torch.linalg.eigvalsh(t.cpu()), a.cpu())
    garbage = a.triu() + torch.randn(2, 21, 21, generator=g, dtype=torch.float64).to(device).tril(-1)
    d2, e2 = tridiagonalize_persistent(garbage)
    assert torch.equal(d, d2) and torch.equal(e, e2)
    with pytest.raises(ValueError, match="n = 2"):
        tridiagonalize_persistent(a[:, :2, :2])
    with pytest.raises(ValueError, match=f"<= {MAX_N}"):
        tridiagonalize_persistent(torch.zeros(1, MAX_N + 1, MAX_N + 1, dtype=torch.float64, device=device))


@needs_kernel
def test_persistent_launch_settings_give_the_same_spectrum():
    """Other strip sizes and warp counts reduce in another order (same spectrum within LAPACK's
    precision); software pipelining of the strip loop changes no arithmetic (bit-equal d and e).
    n = 37 is not a power of two: the kernel's vectors are padded to 64, and the last matrix of a
    batch once read its row sums past the end of the scratch there (NaN spectra in 7 of 30 calls
    under the interpreter, whatever lay beyond on a GPU)."""
    from drope_lens.measurement.spectrum_persistent import tridiagonalize_persistent

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 37, 50, generator=g, dtype=torch.float64)
    x[:, 0] *= 300.0  # a massive row, as hidden states have
    a = (x @ x.mT).to(device)
    d, e = tridiagonalize_persistent(a)
    for strip, warps in ((0, 0), (64, 1), (256, 2), (1024, 8)):
        for batch in (1, 2, 3):  # each a different last matrix
            d2, e2 = tridiagonalize_persistent(a[:batch], strip_elements=strip, warps=warps)
            t = torch.diag_embed(d2) + torch.diag_embed(e2, offset=1) + torch.diag_embed(e2, offset=-1)
            assert torch.isfinite(t).all()
            _check(torch.linalg.eigvalsh(t.cpu()), a[:batch].cpu())
    d3, e3 = tridiagonalize_persistent(a, stages=3)
    assert torch.equal(d, d3) and torch.equal(e, e3)


def test_cusolver_batched_refuses_cpu_tensors():
    a = torch.eye(4, dtype=torch.float64)[None]
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        spectrum.symmetric_eigenvalues(a, method="cusolver_batched")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cusolverDnXsyevBatched runs on CUDA")
def test_cusolver_batched_matches_lapack():
    """One cusolverDnXsyevBatched call for the batch (spectrum_cusolver) against LAPACK, the input
    left as it was; skipped, with the reason, where this cuSOLVER predates the routine."""
    from drope_lens.measurement import spectrum_cusolver

    if not spectrum_cusolver.available():
        pytest.skip("this cuSOLVER has no cusolverDnXsyevBatched (cuSOLVER >= 11.7.1 needed)")
    for a in _matrices(4):
        if a.shape[-1] <= 2:
            continue
        on_gpu = a.cuda()
        kept = on_gpu.clone()
        _check(spectrum.symmetric_eigenvalues(on_gpu, method="cusolver_batched"), a)
        assert torch.equal(on_gpu, kept)
    x = torch.randn(3, 512, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[:, 0] *= 100.0
    a = x @ x.mT
    _check(spectrum.symmetric_eigenvalues(a.cuda(), method="cusolver_batched"), a)


def test_auto_cuda_method_override_is_used_only_for_cuda(monkeypatch):
    """``spectrum.AUTO_CUDA_METHOD`` (the benchmarks' --spectrum-method) changes what "auto" picks on
    CUDA; CPU tensors still go to LAPACK."""
    monkeypatch.setattr(spectrum, "AUTO_CUDA_METHOD", "cusolver_batched")
    a = torch.eye(5, dtype=torch.float64)[None] * 2.0
    torch.testing.assert_close(spectrum.symmetric_eigenvalues(a), torch.full((1, 5), 2.0, dtype=torch.float64))
    if torch.cuda.is_available() and spectrum._kernel() is not None:
        calls = []
        monkeypatch.setattr("drope_lens.measurement.spectrum_cusolver.batched_eigenvalues",
                            lambda x: calls.append(x.shape) or torch.linalg.eigvalsh(x))
        spectrum.symmetric_eigenvalues(a.cuda())
        assert calls == [(1, 5, 5)]
