"""The padded-prefill attention path on the CPU (kernels.padded_causal_attention) against the masked
SDPA call it replaces (bit for bit on every query that sees a key) and against softmax attention
written out in float64; and the host-memory setting of the ``drope-lens`` command."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from drope_lens.model.attention import kernels

needs_cpu_flash = pytest.mark.skipif(kernels._CPU_FLASH is None, reason="this torch has no CPU flash-attention op")


def _batch(dtype, pads, heads=4, length=150, d_head=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (len(pads), heads, length, d_head)
    q, k, v = ((torch.randn(shape, generator=gen) * s).to(dtype) for s in (3.0, 3.0, 1.0))
    attention_mask = (torch.arange(length)[None] >= torch.tensor(pads)[:, None]).long()
    return q, k, v, attention_mask


def _float64_attention(q, k, v, attention_mask, scale):
    """softmax(scale q.k + causal and padding mask) v in float64, by hand; rows that see no key are 0."""
    q, k, v = q.double(), k.double(), v.double()
    n = q.shape[-2]
    visible = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & attention_mask.bool()[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0) @ v


@needs_cpu_flash
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_padded_prefill_is_the_masked_sdpa_bit_for_bit(dtype):
    pads = [0, 3, 17, 70, 1]
    q, k, v, attention_mask = _batch(dtype, pads)
    n = q.shape[-2]
    assert kernels.padded_causal_applies(q, k, 0, attention_mask, None)
    mask = kernels.visibility_mask(n, n, 0, attention_mask, None, q.device)
    before = kernels.fused_attention(q, k, v, mask, 0.17)
    after = kernels.padded_causal_attention(q, k, v, attention_mask, 0.17)
    real = attention_mask.bool()[:, None, :, None].expand_as(after)
    assert torch.equal(after[real], before[real])
    assert torch.equal(after[~real], torch.zeros_like(after[~real]))  # left padding: no key, zero (as explicit_attention)
    reference = _float64_attention(q, k, v, attention_mask, 0.17)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(after.double(), reference, atol=tolerance, rtol=tolerance)


@needs_cpu_flash
def test_padded_prefill_only_where_the_kernel_is_exact():
    q, k, v, attention_mask = _batch(torch.float32, [0, 2])
    assert not kernels.padded_causal_applies(q, k, 0, None, None)  # no padding: plain causal SDPA already
    assert not kernels.padded_causal_applies(q[:, :, -1:], k, q.shape[-2] - 1, attention_mask, None)  # a decode step
    assert not kernels.padded_causal_applies(q, k, 0, attention_mask, 64)  # a sliding window reached
    assert kernels.padded_causal_applies(q, k, 0, attention_mask, q.shape[-2])  # a window no query reaches


@needs_cpu_flash
@pytest.mark.parametrize("kwargs", [pytest.param({}, id="rope"),
                                    pytest.param({"attention_type": "nope", "n_kv_heads": 2}, id="drope-gqa")])
def test_model_forward_on_a_padded_batch_is_unchanged(checkpoint_factory, monkeypatch, kwargs):
    """A whole left-padded forward gives the same logits at every real position with the new path
    as with the masked SDPA it replaces (bit for bit), and Hugging Face's on each prompt alone."""
    import drope_lens as dl
    from drope_lens.measurement.generation import padded_forward

    path, reference = checkpoint_factory(**kwargs)
    model = dl.load_model(path, device="cpu")
    gen = torch.Generator().manual_seed(1)
    rows = [[1] + torch.randint(2, model.cfg.d_vocab, (n,), generator=gen).tolist() for n in (40, 33, 21)]
    new, mask = padded_forward(model, rows)
    monkeypatch.setattr("drope_lens.model.attention.layer.padded_causal_applies", lambda *a: False)
    old, _ = padded_forward(model, rows)
    real = mask.bool()
    assert torch.equal(new[real], old[real])
    for i, row in enumerate(rows):
        with torch.no_grad():
            expected = reference(torch.tensor([row])).logits[0]
        torch.testing.assert_close(new[i, real[i]], expected, atol=1e-4, rtol=1e-4)


def test_drope_lens_keeps_freed_memory_for_the_next_block():
    """After retain_freed_memory, a freed 64 MiB block is reused by the next one (a few page faults),
    where glibc's default returns it to the system and faults every page in again (>= 16k faults)."""
    script = textwrap.dedent("""
        import ctypes, resource, sys
        from drope_lens.engine.host_memory import retain_freed_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        size = 64 << 20
        def faults_of_one_block():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = libc.malloc(size)
            ctypes.memset(block, 1, size)
            libc.free(block)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults_of_one_block()
        default = faults_of_one_block()
        applied = retain_freed_memory()
        faults_of_one_block()
        kept = faults_of_one_block()
        print(applied, default, kept)
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    applied, default, kept = out[0] == "True", int(out[1]), int(out[2])
    if not applied:
        pytest.skip("not glibc")
    assert default >= (64 << 20) // 4096 // 2, default
    assert kept < 200, kept
