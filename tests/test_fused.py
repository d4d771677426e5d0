"""Fused CUDA kernels against the eager code they replace (GPU; or the Triton interpreter on CPU
with TRITON_INTERPRET=1), and the once-per-block ln1 against TransformerLens's block (CPU)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from drope_lens.model import fused
from drope_lens.model.attention import RotaryTable, apply_rotary

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
needs_kernels = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()) or fused._kernels() is None,
    reason="needs CUDA and Triton (or TRITON_INTERPRET=1 with Triton installed)",
)
# The Triton interpreter rounds float32 -> bfloat16 by truncation, the GPU to nearest-even (as
# PyTorch does): the interpreter checks the float32 arithmetic only.
DTYPES = [torch.float32] if INTERPRET else [torch.bfloat16, torch.float16, torch.float32]


def eager_rms_norm(x, w, eps):
    """TransformerLens 3.9 RMSNorm.forward, verbatim arithmetic."""
    y = x.to(torch.float32) if x.dtype not in (torch.float32, torch.float64) else x
    scale = (y.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return (y / scale).to(x.dtype) * w


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance between equal-dtype tensors in units in the last place of that dtype."""
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[a.dtype]
    ia, ib = a.view(bits).long(), b.view(bits).long()
    sign = 1 << (8 * a.element_size() - 1)
    ia = torch.where(ia < 0, -(ia + sign), ia)  # sign-magnitude -> monotone integers
    ib = torch.where(ib < 0, -(ib + sign), ib)
    return (ia - ib).abs()


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 37, 4096), (5, 960)])
def test_rms_norm_matches_transformer_lens(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype).to(DEVICE)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(dtype).to(DEVICE)
    with torch.inference_mode():
        got, want = fused.rms_norm(x, w, 1e-5), eager_rms_norm(x, w, 1e-5)
    assert got.shape == want.shape and got.dtype == want.dtype
    # Only the fp32 sum of squares is accumulated in another order, which moves the float32
    # scale by a few float32 ulps: within float32 rounding in float32. After rounding to 16 bits
    # the normalised value differs by at most one ulp, and the product with the weight (rounded
    # again) by at most two, in few elements.
    if dtype == torch.float32:
        torch.testing.assert_close(got, want)
    else:
        apart = ulps_apart(got, want)
        assert int(apart.max()) <= 2
        assert float((apart > 0).float().mean()) < 0.01


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_add_is_the_eager_expression(dtype):
    gen = torch.Generator().manual_seed(1)
    gate, up = ((torch.randn(2, 3, 37, 1000, generator=gen) * 4).to(dtype).to(DEVICE) for _ in range(2))
    bias = torch.randn(1000, generator=gen).to(dtype).to(DEVICE)
    with torch.inference_mode():
        got = fused.silu_mul_add(gate, up, bias)
        want = F.silu(gate) * up + bias
    if INTERPRET:  # the interpreter's exp is numpy's, not CUDA's expf
        torch.testing.assert_close(got, want)
    else:
        assert torch.equal(got, want)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 7])
def test_rotary_is_bit_identical_to_the_eager_path(dtype, offset):
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 19, 6, 64, generator=gen) * 5).to(dtype).to(DEVICE)
    with torch.inference_mode():
        got = apply_rotary(x, offset, 10000.0)
        want = apply_rotary(x, offset, 10000.0, fused_kernel=False)
    assert torch.equal(got, want)
    # left padding: per-row position ids
    ids = torch.tensor([[0] * 4 + list(range(15)), list(range(19))], device=DEVICE)
    with torch.inference_mode():
        got = apply_rotary(x, 0, 10000.0, position_ids=ids)
        want = apply_rotary(x, 0, 10000.0, position_ids=ids, fused_kernel=False)
    assert torch.equal(got, want)


@needs_kernels
def test_rotary_kernel_reads_the_table_at_absolute_positions():
    x = torch.ones(1, 3, 1, 8, device=DEVICE)
    cos, sin = RotaryTable.table(8, 10000.0, 10, torch.device(DEVICE))
    with torch.inference_mode():
        out = fused.rotary(x, cos, sin, 5)
    expected = cos[5:8] + sin[5:8].roll(0, -1) * 1  # x = 1 everywhere: cos + signed sin
    torch.testing.assert_close(out[0, :, 0], expected, rtol=0, atol=0)


def test_autograd_and_cpu_keep_the_eager_path():
    x = torch.randn(2, 3, requires_grad=True)
    assert not fused.usable(x) or INTERPRET
    if torch.cuda.is_available():
        y = torch.randn(2, 3, device="cuda", requires_grad=True)
        assert not fused.usable(y)
        with torch.no_grad():
            assert fused.usable(y) == (fused._kernels() is not None)


@pytest.mark.skipif(not torch.cuda.is_available() or fused._kernels() is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize("variant", ["rope", "drope"])
def test_fused_bf16_model_is_as_accurate_as_the_eager_one(variant):
    """Against a float32 run of the same checkpoint, the fused bf16 forward's logit error is the
    eager bf16 forward's (the kernels round as the eager code does; only RMSNorm's sum order
    differs), and hooks/caches see the same activations."""
    import drope_lens as dl

    source = f"bundled:toy/{variant}"
    reference = dl.load_model(source, dtype="fp32", device="cuda")
    model = dl.load_model(source, dtype="bf16", device="cuda")
    tokens = reference.to_tokens(["The city of Paris is in France. " * 8, "Is the city of Oslo in Norway? " * 8])
    with torch.inference_mode():
        exact = reference(tokens)
        fused_logits = model(tokens).float()
        model.set_fused_kernels(False)
        eager_logits = model(tokens).float()
        model.set_fused_kernels(True)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_rot_k", "hook_post")))
        model.set_fused_kernels(False)
        _, eager_cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_rot_k", "hook_post")))
    fused_error = (fused_logits - exact).abs().mean().item()
    eager_error = (eager_logits - exact).abs().mean().item()
    print(f"{variant}: mean |logit error| fused {fused_error:.5f} eager {eager_error:.5f}; "
          f"max |fused - eager| {(fused_logits - eager_logits).abs().max().item():.5f}")
    assert fused_error <= 1.1 * eager_error
    assert (fused_logits.argmax(-1) == eager_logits.argmax(-1)).float().mean() > 0.99
    # Hooks see the same activations up to bf16 rounding noise: a one-ulp difference in a
    # normalised input moves a few GEMM outputs across a rounding boundary (relative norm of the
    # difference well under one bf16 ulp, 2**-8).
    assert sorted(cache.keys()) == sorted(eager_cache.keys())
    for name in cache.keys():
        a, b = cache[name].float(), eager_cache[name].float()
        assert ((a - b).norm() / b.norm()).item() < 2**-8, name


def test_float64_is_never_fused():
    x = torch.zeros(2, 3, dtype=torch.float64, device=DEVICE if (INTERPRET or torch.cuda.is_available()) else "cpu")
    assert not fused.usable(x)


@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available() or fused._kernels() is None,
                    reason="direct launches need CUDA and compiled Triton kernels")
def test_direct_launch_runs_the_kernel_triton_would_pick():
    """After the first launch of a key (through Triton), fused.Launcher calls the compiled kernel's
    launcher itself; the result must equal Triton's own launch, also for inputs Triton
    specialises differently (a 2-byte-misaligned view, widths of Llama-2-7B, row counts of 1)."""
    kernels = fused._kernels()
    gen = torch.Generator().manual_seed(3)
    for rows in (1, 37):
        big = (torch.randn(rows * 4096 + 1, generator=gen) * 3).to(torch.bfloat16).cuda()
        for x in (big[:-1].view(rows, 4096), big[1:].view(rows, 4096)):  # aligned, then misaligned by 2 bytes
            w = (1 + 0.1 * torch.randn(4096, generator=gen)).to(torch.bfloat16).cuda()
            with torch.inference_mode():
                fused.rms_norm(x, w, 1e-5)  # the first launch of this key goes through Triton
                before = kernels.rms_norm.direct_launches
                got = fused.rms_norm(x, w, 1e-5)
                assert kernels.rms_norm.direct_launches == before + 1
                want = torch.empty_like(x)
                kernels.rms_norm.kernel[(rows,)](x.contiguous(), w, want, 4096, 1.0 / 4096, 1e-5, BLOCK=4096,
                                                 num_warps=fused._warps(4096), **fused.NO_CONTRACTION)
            assert torch.equal(got, want)
            apart = ulps_apart(got, eager_rms_norm(x, w, 1e-5))
            assert int(apart.max()) <= 2
    gate, up = ((torch.randn(2, 37, 11008, generator=gen) * 4).to(torch.bfloat16).cuda() for _ in range(2))
    bias = torch.zeros(11008, dtype=torch.bfloat16, device="cuda")
    with torch.inference_mode():
        first = fused.silu_mul_add(gate, up, bias)
        before = kernels.silu_mul_add.direct_launches
        second = fused.silu_mul_add(gate, up, bias)
    assert kernels.silu_mul_add.direct_launches == before + 1
    assert torch.equal(first, second) and torch.equal(second, F.silu(gate) * up + bias)
    x = (torch.randn(1, 513, 32, 128, generator=gen) * 5).to(torch.bfloat16).cuda()
    with torch.inference_mode():
        for offset in (0, 5, 16):
            for _ in range(2):
                got = apply_rotary(x, offset, 10000.0)
                assert torch.equal(got, apply_rotary(x, offset, 10000.0, fused_kernel=False))
    assert kernels.rotary.direct_launches >= 3


def test_launch_key_separates_what_triton_specialises():
    """fused.Launcher reuses a compiled kernel only for arguments with the same key: the key must
    separate every property Triton 3.x specialises a launch on (a tensor's dtype and 16-byte
    alignment; an integer being 1, divisible by 16, or beyond 32 bits), or a direct launch could
    run a binary compiled for other arguments."""
    key = fused._arg_key
    storage = torch.zeros(64, dtype=torch.float16)
    assert key(storage) != key(storage.float())
    assert key(storage[8:]) == key(storage)  # 16 bytes further: still aligned
    assert key(storage[1:]) != key(storage)  # 2 bytes further: misaligned
    assert key(1) != key(2) and key(16) != key(17) and key(32) == key(48) and key(3) == key(5)
    assert key(2**31) != key(2**31 - 2**4) and key(-(2**31) - 16) != key(-(2**31))
    assert key(1e-5) == key(0.5)
    assert key(True) != key(False) and key(True) != key(1)
