"""Dense -> band -> tridiagonal (drope_lens.measurement.spectrum_two_stage) against LAPACK's ``eigvalsh``.

The PyTorch stages run everywhere; the Triton kernels on CUDA or under ``TRITON_INTERPRET=1``.
Every check is against LAPACK (an independent implementation), at float64 precision.
"""

import os

import pytest
import torch

from drope_lens.measurement import spectrum
from drope_lens.measurement import spectrum_two_stage as two_stage

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()) or two_stage._kernels() is None,
    reason="the two-stage kernels need CUDA and Triton, or TRITON_INTERPRET=1 with Triton installed",
)


def _grams(n: int, batch: int = 2, seed: int = 0, massive: float = 40.0) -> torch.Tensor:
    """Gram matrices of [n, 2n] float64 rows, the first one massive (as hidden states have)."""
    x = torch.randn(batch, n, 2 * n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x[:, 0] *= massive
    return x @ x.mT


def _tridiagonal_spectrum(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    t = torch.diag_embed(d) + torch.diag_embed(e, offset=1) + torch.diag_embed(e, offset=-1)
    return torch.linalg.eigvalsh(t.cpu())


def _assert_same_spectrum(got: torch.Tensor, a: torch.Tensor) -> None:
    """Eigenvalues equal to LAPACK's within n * 1e-14 of the largest entry (backward-stable bound)."""
    want = torch.linalg.eigvalsh(a.cpu())
    scale = a.cpu().flatten(1).abs().amax(dim=1).clamp(min=1e-200)[:, None]
    error = ((got.cpu() - want) / scale).abs().max().item()
    assert error < 1e-14 * a.shape[-1], f"largest eigenvalue error {error:.2e} of the largest entry"


# (n, band): n a multiple of the band, not one, smaller than the band, one row past a band, tiny
SHAPES = [(64, 16), (50, 8), (37, 4), (10, 16), (33, 32), (3, 2), (4, 2)]


@pytest.mark.parametrize("n,band", SHAPES)
def test_pytorch_stages_keep_the_spectrum(n, band):
    a = _grams(n, seed=n)
    _assert_same_spectrum(_tridiagonal_spectrum(*two_stage.tridiagonalize_two_stage(a, band=band)), a)


@pytest.mark.parametrize("n,band", [(64, 16), (50, 8), (37, 4), (10, 16), (4, 2)])
@pytest.mark.parametrize("panels", [2, 3])
def test_stage_one_with_grouped_updates_keeps_the_spectrum(n, band, panels):
    """Trailing updates of 2 or 3 panels applied together: exact zeros below the band, LAPACK's
    spectrum; one panel per update is the plain reduction, bit for bit."""
    a = _grams(n, seed=20 + n)
    plain, grouped, single = a.clone(), a.clone(), a.clone()
    two_stage.reduce_to_band(plain, band, use_triton=False)
    two_stage.reduce_to_band(single, band, use_triton=False, panels_per_update=1)
    two_stage.reduce_to_band(grouped, band, use_triton=False, panels_per_update=panels)
    assert torch.equal(torch.tril(single), torch.tril(plain))
    assert torch.count_nonzero(torch.tril(grouped, diagonal=-band - 1)) == 0
    _assert_same_spectrum(torch.linalg.eigvalsh(torch.tril(grouped) + torch.tril(grouped, diagonal=-1).mT), a)


def test_stage_one_leaves_exact_zeros_below_the_band_and_keeps_the_spectrum():
    a = _grams(40, seed=1)
    work = a.clone()
    two_stage.reduce_to_band(work, 8, use_triton=False)
    assert torch.count_nonzero(torch.tril(work, diagonal=-9)) == 0
    assert torch.count_nonzero(torch.tril(work, diagonal=-8)) > 0  # the band itself is not emptied
    banded = torch.tril(work) + torch.tril(work, diagonal=-1).mT  # stage 2 reads the lower triangle only
    _assert_same_spectrum(torch.linalg.eigvalsh(banded), a)


def test_stage_two_reduces_a_band_matrix_and_ignores_the_upper_triangle():
    g = torch.Generator().manual_seed(2)
    full = torch.randn(2, 30, 30, dtype=torch.float64, generator=g)
    band = torch.tril(torch.triu(full + full.mT, diagonal=-4), diagonal=4)  # half-width 4
    garbage = torch.tril(band) + torch.triu(torch.randn(2, 30, 30, dtype=torch.float64, generator=g), diagonal=1)
    d, e = two_stage.band_to_tridiagonal(garbage.clone(), 4, use_triton=False)
    _assert_same_spectrum(_tridiagonal_spectrum(d, e), band)


def test_the_input_is_kept_unless_copy_is_false():
    a = _grams(24, seed=3)
    kept = a.clone()
    d, e = two_stage.tridiagonalize_two_stage(a, band=8)
    assert torch.equal(a, kept)
    d2, e2 = two_stage.tridiagonalize_two_stage(a, band=8, copy=False)
    assert torch.equal(d, d2) and torch.equal(e, e2)
    assert not torch.equal(a, kept)  # worked in place


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        two_stage.tridiagonalize_two_stage(_grams(8), band=6)
    with pytest.raises(ValueError, match="expected"):
        two_stage.tridiagonalize_two_stage(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="panels_per_update"):
        two_stage.reduce_to_band(_grams(8), 2, use_triton=False, panels_per_update=-1)


def test_zero_and_tiny_matrices():
    for n in (1, 2):
        a = _grams(n, seed=4)
        d, e = two_stage.tridiagonalize_two_stage(a, band=4)
        assert d.shape == (2, n) and e.shape == (2, n - 1)
        _assert_same_spectrum(_tridiagonal_spectrum(d, e), a)
    zeros = torch.zeros(2, 20, 20, dtype=torch.float64)
    d, e = two_stage.tridiagonalize_two_stage(zeros, band=4)
    assert torch.count_nonzero(d) == 0 and torch.count_nonzero(e) == 0


@needs_triton
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("n,band,panels", [(50, 16, 1), (37, 8, 1), (10, 16, 1), (33, 32, 1), (50, 8, 2)])
def test_triton_kernels_keep_the_spectrum(n, band, panels, carry, monkeypatch):
    monkeypatch.setattr(two_stage, "PANELS_PER_UPDATE", panels)
    monkeypatch.setattr(two_stage, "CHASE_CARRY_PIVOT", carry)
    a = _grams(n, seed=10 + n).to(DEVICE)
    _assert_same_spectrum(_tridiagonal_spectrum(*two_stage.tridiagonalize_two_stage(a, band=band)), a)


@needs_triton
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n,block", [(50, 16), (70, 32), (40, 64), (18, 16), (34, 16), (19, 64)])
def test_fused_stage_one_keeps_the_spectrum(n, block, fused, monkeypatch):
    """Stage 1 on the Triton path, each trailing update fused with the next panel's product
    (``FUSED_UPDATE``, tiles of 16 / 32 / 64: several tile rows, partial tiles, one row or two past the
    band) and without: exact zeros below the band, LAPACK's spectrum from the lower triangle."""
    monkeypatch.setattr(two_stage, "FUSED_UPDATE", fused)
    monkeypatch.setattr(two_stage, "FUSED_BLOCK", block)
    a = _grams(n, seed=30 + n).to(DEVICE)
    work = a.clone()
    two_stage.reduce_to_band(work, 16)
    assert torch.count_nonzero(torch.tril(work, diagonal=-17)) == 0
    banded = torch.tril(work) + torch.tril(work, diagonal=-1).mT
    _assert_same_spectrum(torch.linalg.eigvalsh(banded.cpu()), a)


@needs_triton
@pytest.mark.parametrize("prefetch,symmetric,carry", [(True, False, False), (False, False, False), (True, True, False),
                                                      (False, True, False), (True, False, True)])
def test_triton_and_pytorch_stages_agree(prefetch, symmetric, carry, monkeypatch):
    """The kernels (with and without the bulge chase's prefetch, its diagonal blocks read whole or as
    a lower triangle, the pivot column carried from step to step) and the PyTorch stages do the same
    arithmetic in different orders."""
    monkeypatch.setattr(two_stage, "CHASE_PREFETCH", prefetch)
    monkeypatch.setattr(two_stage, "CHASE_SYMMETRIC_LOAD", symmetric)
    monkeypatch.setattr(two_stage, "CHASE_CARRY_PIVOT", carry)
    a = _grams(40, seed=5)
    d, e = two_stage.tridiagonalize_two_stage(a, band=8)
    d2, e2 = two_stage.tridiagonalize_two_stage(a.to(DEVICE), band=8)
    scale = a.abs().max()
    assert ((d - d2.cpu()).abs().max() / scale) < 1e-12
    assert ((e.abs() - e2.cpu().abs()).abs().max() / scale) < 1e-12  # a reflector may flip a sign


@pytest.mark.skipif(not torch.cuda.is_available() or two_stage._kernels() is None, reason="needs CUDA and Triton")
def test_study_size_matches_lapack():
    """512 x 512 (the study's Gram matrices), every band the benchmark tries, through
    ``symmetric_eigenvalues`` and its entropies, on two batches in a row."""
    from drope_lens.measurement.entropy import entropies_from_gram, entropies_from_spectrum

    default = two_stage.BAND
    try:
        for band in (16, 32, 64):
            two_stage.BAND = band
            for seed in (6, 7):
                a = _grams(512, batch=3, seed=seed, massive=100.0 * seed)
                got = spectrum.symmetric_eigenvalues(a.cuda(), method="two_stage")
                _assert_same_spectrum(got, a)
                for mine, lapack in zip(entropies_from_spectrum(got, 512, 1024), entropies_from_gram(a, 512, 1024)):
                    assert (mine.cpu() - lapack).abs().max() < 1e-10
    finally:
        two_stage.BAND = default
    a = _grams(1000, batch=2, seed=9)  # above 512, not a power of two, near MAX_N: wider panels
    _assert_same_spectrum(spectrum.symmetric_eigenvalues(a.cuda()), a)  # "auto" takes two_stage up to MAX_N
    a = _grams(512, batch=2, seed=8).cuda()
    want = spectrum.symmetric_eigenvalues(a, method="two_stage")
    got = spectrum.symmetric_eigenvalues(a, method="two_stage", overwrite=True)  # in place: same answer
    assert torch.equal(want, got)
    with pytest.raises(ValueError, match=f"<= {two_stage.MAX_N}"):
        two_stage.tridiagonalize_two_stage(torch.zeros(1, two_stage.MAX_N + 1, two_stage.MAX_N + 1,
                                                       dtype=torch.float64, device="cuda"))
