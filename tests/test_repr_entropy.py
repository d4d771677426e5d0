"""Representation entropy (Exp 4) from the Gram matrix's eigenvalues against a float64 SVD."""

import pytest
import torch

from drope_lens.experiments.sinks import gram_matrix, representation_entropy


def _reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both entropies from ``torch.linalg.svdvals`` in float64, written out independently."""
    h_energy, h_norm = [], []
    for matrix in x.double():
        s = torch.linalg.svdvals(matrix)
        p = s**2 / (s**2).sum()
        p = p[p > 0]
        h_energy.append(-(p * p.log()).sum())
        rank = int((s > s.max() * max(matrix.shape) * torch.finfo(torch.float32).eps).sum())
        q = s / s.sum()
        q = q[q > 0]
        h_norm.append(-(q * q.log()).sum() / torch.log(torch.tensor(float(rank), dtype=torch.float64)))
    return torch.stack(h_energy), torch.stack(h_norm)


def _spiky(batch: int, pos: int, width: int, seed: int) -> torch.Tensor:
    """Hidden-state-like rows: a few huge directions (a BOS-like spike), a decaying spectrum, noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(batch, pos, pos, generator=g, dtype=torch.float64))[0][..., : min(pos, width)]
    v = torch.linalg.qr(torch.randn(batch, width, width, generator=g, dtype=torch.float64))[0][..., : min(pos, width)]
    spectrum = torch.logspace(3, -4, min(pos, width), dtype=torch.float64)
    x = (u * spectrum) @ v.mT
    x[:, 0] *= 50.0  # a massive position-0 row
    return x.float()


def test_gram_eigenvalues_match_float64_svd():
    for pos, width in ((48, 64), (64, 24)):  # Gram X X^T and X^T X
        x = _spiky(3, pos, width, seed=pos)
        got_energy, got_norm = representation_entropy(x)
        want_energy, want_norm = _reference(x)
        assert got_energy.shape == got_norm.shape == (3,)
        torch.testing.assert_close(got_energy.double(), want_energy, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_norm.double(), want_norm, atol=1e-6, rtol=0)


def test_rank_deficient_and_random_rows():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(2, 40, 5, generator=g) @ torch.randn(2, 5, 32, generator=g)  # rank 5
    for x in (low, torch.randn(4, 33, 16, generator=g) * 3.0):
        got_energy, got_norm = representation_entropy(x)
        want_energy, want_norm = _reference(x)
        torch.testing.assert_close(got_energy.double(), want_energy, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_norm.double(), want_norm, atol=1e-6, rtol=0)


def test_deferred_entropies_solve_every_layer_after_the_forward():
    """DeferredEntropies (Exp 4's CUDA path, run here on the CPU): layers of two shapes added in any
    order, solved at launch(), each layer gets its own SVD entropies back from result()."""
    from drope_lens.measurement.entropy import DeferredEntropies

    g = torch.Generator().manual_seed(3)
    xs = {0: _spiky(2, 24, 40, seed=5), 3: torch.randn(2, 24, 40, generator=g), 1: torch.randn(2, 30, 12, generator=g),
          2: _spiky(2, 24, 40, seed=6) * 4}
    deferred = DeferredEntropies()
    for layer, x in xs.items():
        deferred.add(layer, gram_matrix(x), tuple(x.shape[-2:]))
    deferred.launch()
    with pytest.raises(RuntimeError, match="layer 4: DeferredEntropies was already launched"):
        deferred.add(4, gram_matrix(xs[0]), (24, 40))
    solved = deferred.result()
    assert sorted(solved) == [0, 1, 2, 3]
    for layer, x in xs.items():
        want_energy, want_norm = _reference(x)
        energy, norm = solved[layer]
        assert energy.device.type == "cpu" and energy.dtype == torch.float64 and energy.shape == (2,)
        torch.testing.assert_close(energy, want_energy, atol=1e-6, rtol=0)
        torch.testing.assert_close(norm, want_norm, atol=1e-6, rtol=0)


@pytest.mark.parametrize("order", ["in order", "out of order", "one slot short"])
def test_deferred_entropies_solve_their_buffer_in_place(monkeypatch, order):
    """Gram matrices written into DeferredEntropies' slots (one buffer for every layer) are solved as
    that buffer, with no concatenation, when every slot was filled and added in order; otherwise the
    layers are concatenated as before. Either way each layer gets its SVD entropies."""
    from drope_lens.measurement import entropy

    seen = []
    solve = entropy.entropies_from_gram
    monkeypatch.setattr(entropy, "entropies_from_gram", lambda batch, *a, **k: seen.append(batch) or solve(batch, *a, **k))
    xs = [_spiky(2, 24, 40, seed=s) for s in range(3)]
    deferred = entropy.DeferredEntropies(n_layers=3)
    used = xs[:2] if order == "one slot short" else xs
    slots = [deferred.slot(2, 24, "cpu") for _ in used]
    for x, slot in zip(used, slots):
        assert entropy.gram_matrix(x, out=slot) is slot
    added = list(enumerate(slots))[::-1] if order == "out of order" else list(enumerate(slots))
    for layer, slot in added:
        deferred.add(layer, slot, (24, 40))
    deferred.launch()
    solved = deferred.result()
    assert len(seen) == 1
    in_place = seen[0].data_ptr() == slots[0].data_ptr()
    assert in_place == (order == "in order")
    for layer, x in enumerate(used):
        want_energy, want_norm = _reference(x)
        torch.testing.assert_close(solved[layer][0], want_energy, atol=1e-6, rtol=0)
        torch.testing.assert_close(solved[layer][1], want_norm, atol=1e-6, rtol=0)
    table = deferred.table(3)  # [2, layer, batch] view: only for layers 0..2 added in order
    assert (table is not None) == (order == "in order")
    if table is not None:
        for layer in range(3):
            assert torch.equal(table[0, layer], solved[layer][0]) and torch.equal(table[1, layer], solved[layer][1])
    assert deferred.slot(2, 24, "cpu").shape == (2, 24, 24)  # after launch: a fresh tensor
    with pytest.raises(ValueError, match="expected a contiguous float64"):
        entropy.gram_matrix(xs[0], out=torch.empty(2, 24, 24))


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_gram_matrix_in_blocks_is_the_full_product(monkeypatch, blocks):
    """X X^T from the block columns on and below the diagonal, mirrored ((k + 1) / 2k of the
    products), equals one full float64 product to rounding and is exactly symmetric; ``pos`` not
    divisible by the blocks and X^T X take one product. Checked against a float64 product written
    out here."""
    from drope_lens.measurement import entropy

    monkeypatch.setattr(entropy, "GRAM_BLOCKS", blocks)
    monkeypatch.setattr(entropy, "BLOCKS_MIN_POS", 8)
    g = torch.Generator().manual_seed(1)
    for shape in ((3, 16, 40), (2, 9, 40), (2, 40, 12)):
        x = (torch.randn(*shape, generator=g) * torch.logspace(2, -2, shape[1])[:, None]).bfloat16()
        x64 = x.double()
        want = torch.einsum("bik,bjk->bij", x64, x64) if shape[1] <= shape[2] else torch.einsum("bki,bkj->bij", x64, x64)
        got = entropy.gram_matrix(x)
        assert got.dtype == torch.float64 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13 * want.abs().max().item())
        if blocks > 1:
            assert torch.equal(got, got.mT)


def _triton_device():
    """Where the Triton Gram kernel runs: CUDA, or the CPU under TRITON_INTERPRET=1; else None."""
    import os

    from drope_lens.measurement import entropy

    if entropy._gram_kernel() is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


@pytest.mark.skipif(_triton_device() is None, reason="the Triton Gram kernel needs CUDA, or Triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("tile,tile_k", [(16, 32), (32, 64), (64, 32)])
def test_triton_gram_is_the_float64_product(monkeypatch, tile, tile_k):
    """The Triton kernel's X X^T (lower tiles, mirrored) against a float64 product written out here:
    equal to rounding, exactly symmetric, for partial tiles, partial k steps, bfloat16 read as int32
    pairs, strided and odd-width bfloat16, float16, float32, and ``out=``; X^T X (pos > d_model)
    keeps the cuBLAS / LAPACK-side product."""
    from drope_lens.measurement import entropy

    device = _triton_device()
    monkeypatch.setattr(entropy, "GRAM_TILE", tile)
    monkeypatch.setattr(entropy, "GRAM_TILE_K", tile_k)
    g = torch.Generator().manual_seed(tile)
    cases = [((2, 70, 150), torch.bfloat16, False, True), ((1, 130, 40), torch.float32, False, False),
             ((3, 16, 34), torch.bfloat16, True, False), ((2, 20, 33), torch.bfloat16, False, False),
             ((2, 40, 24), torch.bfloat16, False, False), ((1, 24, 66), torch.float16, False, False),
             ((1, 1, 8), torch.bfloat16, False, True), ((1, 40, 130), torch.float32, False, False)]
    for shape, dtype, strided, pairs in cases:
        x = torch.randn(*shape, generator=g) * torch.logspace(2, -2, shape[1])[:, None]
        x[:, 0] *= 40.0
        x = x.to(dtype).to(device)
        if strided:  # a [batch, pos, d_model] view with d_model's stride > 1
            x = x.mT.contiguous().mT
        x64 = x.double().cpu()
        want = torch.einsum("bik,bjk->bij", x64, x64) if shape[1] <= shape[2] else torch.einsum("bki,bkj->bij", x64, x64)
        assert entropy._triton_gram(x) == (shape[1] <= shape[2])
        assert entropy._as_pairs(x) == pairs or not entropy._triton_gram(x)
        out = torch.full(want.shape, float("nan"), dtype=torch.float64, device=device)
        got = entropy.gram_matrix(x, out=out)
        assert got.data_ptr() == out.data_ptr() and got.dtype == torch.float64
        torch.testing.assert_close(got.cpu(), want, rtol=1e-13, atol=1e-13 * want.abs().max().item())
        assert torch.equal(got, got.mT)


@pytest.mark.skipif(_triton_device() is None, reason="the Triton Gram kernel needs CUDA, or Triton with TRITON_INTERPRET=1")
def test_triton_gram_rejects_a_step_too_narrow_for_tl_dot(monkeypatch):
    from drope_lens.measurement import entropy

    x = torch.randn(1, 8, 64).bfloat16().to(_triton_device())
    for width in (16, 48):
        monkeypatch.setattr(entropy, "GRAM_TILE_K", width)
        with pytest.raises(ValueError, match=f"GRAM_TILE_K={width}: must be a power of two of at least 32"):
            entropy.gram_matrix(x)
