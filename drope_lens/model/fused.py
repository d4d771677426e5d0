"""Fused GPU kernels (Triton) for the memory-bound steps of a Llama forward.

On an H100, one 10 x 512-token forward with logits of a Llama-2-7B-shaped bf16 model spent 88 ms
in GEMMs and, with stock TransformerLens modules, 72 ms (RoPE) in elementwise, copy and
reduction kernels; TransformerLens's RMSNorm (upcast, square, mean, add, sqrt, divide, downcast,
weight: one kernel each, four norms per layer) took about 36 ms of that
(``docs/gpu_evidence/profile_forward_h100_before_fused_kernels.json``). Each kernel here reads its
inputs once and writes its output once, and performs *the same roundings in the same order* as
the eager code it replaces, with multiply-add contraction (FMA) switched off: SiLU-gate and
rotary are bit-identical to the eager path; RMSNorm accumulates the float32 sum of squares in
another order, so an element may differ in its last bit or two after rounding to 16 bits. With
them (and ``ln1`` computed once per block, :mod:`drope_lens.model.block`) the same forward takes 111 ms
against 159 ms for ``transformers`` (``docs/gpu_evidence/load_forward_h100_fused_kernels.json``).

They are used only where :func:`usable` says so: CUDA tensors, Triton importable, and no autograd
graph recorded through the inputs (training keeps the eager path). Hooked modules keep the eager
path where a hook needs an intermediate that the kernel never materialises (RMSNorm's
``hook_scale``/``hook_normalized``). ``DropeLensTransformer.set_fused_kernels(False)`` turns them
off for a model.
"""

from __future__ import annotations

import contextlib
import functools
import os
from types import SimpleNamespace
from typing import Optional

import torch
from jaxtyping import Float, Int


@functools.lru_cache(maxsize=None)
def _kernels() -> Optional[SimpleNamespace]:
    """The compiled-on-first-use Triton kernels, or None when Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
        from triton.language.extra import libdevice
    except Exception:  # no triton (CPU builds of torch), or a broken install
        return None

    @triton.jit
    def rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, inv_n, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=inside, other=0.0).to(tl.float32)
        mean = tl.sum(x * x, axis=0) * inv_n
        scale = tl.sqrt_rn(mean + eps)
        normalized = tl.div_rn(x, scale).to(out_ptr.dtype.element_ty)
        w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        out = (normalized.to(tl.float32) * w).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + row * n_cols + cols, out, mask=inside)

    @triton.jit
    def silu_mul_add_kernel(gate_ptr, up_ptr, bias_ptr, out_ptr, n_elements, n_cols,
                            BLOCK: tl.constexpr, ACCURATE_EXP: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n_elements
        gate = tl.load(gate_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        up = tl.load(up_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + offsets % n_cols, mask=inside, other=0.0).to(tl.float32)
        if ACCURATE_EXP:
            exp = libdevice.exp(-gate)  # expf, as PyTorch's SiLU kernel calls it
        else:  # the Triton interpreter has no libdevice
            exp = tl.exp(-gate)
        dtype = out_ptr.dtype.element_ty
        silu = tl.div_rn(gate, 1.0 + exp).to(dtype)
        product = (silu.to(tl.float32) * up).to(dtype)
        out = (product.to(tl.float32) + bias).to(dtype)
        tl.store(out_ptr + offsets, out, mask=inside)

    @triton.jit
    def rotary_kernel(x_ptr, cos_ptr, sin_ptr, pos_ptr, out_ptr, n_pos, offset, width, d_head,
                      BLOCK: tl.constexpr, HAS_POSITION_IDS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # one (batch, position) row of width = heads * d_head
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        dim = cols % d_head
        partner = cols - dim + (dim + d_head // 2) % d_head
        if HAS_POSITION_IDS:
            position = tl.load(pos_ptr + row).to(tl.int64)
        else:
            position = offset + row % n_pos
        dtype = out_ptr.dtype.element_ty
        cos = tl.load(cos_ptr + position * d_head + dim, mask=inside, other=0.0).to(dtype).to(tl.float32)
        sin = tl.load(sin_ptr + position * d_head + dim, mask=inside, other=0.0).to(dtype).to(tl.float32)
        x = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32)
        x_partner = tl.load(x_ptr + row * width + partner, mask=inside, other=0.0).to(tl.float32)
        straight = (x * cos).to(dtype).to(tl.float32)
        rotated = (x_partner * sin).to(dtype).to(tl.float32)
        tl.store(out_ptr + row * width + cols, (straight + rotated).to(dtype), mask=inside)

    return SimpleNamespace(
        triton=triton, rms_norm=rms_norm_kernel, silu_mul_add=silu_mul_add_kernel, rotary=rotary_kernel
    )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Launch options that forbid fusing a multiply and an add into one FMA (one rounding where the
# eager code rounds twice); the interpreter takes no compile options.
NO_CONTRACTION: dict = {} if _interpreting() else {"enable_fp_fusion": False}


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def usable(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels may replace the eager code for these tensors: Triton is
    importable, every tensor is on CUDA (or Triton runs in interpreter mode) and is float16,
    bfloat16 or float32, and no autograd graph is being recorded through them."""
    if not (_interpreting() or all(t.is_cuda for t in tensors)):
        return False
    if any(t.dtype not in _FLOAT_DTYPES for t in tensors):  # the kernels compute in float32
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return _kernels() is not None


def _require() -> SimpleNamespace:
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("drope_lens.model.fused needs Triton (installed with the CUDA builds of PyTorch); use the eager path.")
    return kernels


def _on_device_of(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``x``'s (models split over GPUs)."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _warps(block: int) -> int:
    return max(1, min(16, block // 256))


def rms_norm(
    x: Float[torch.Tensor, "... length"], weight: Float[torch.Tensor, "length"], eps: float
) -> Float[torch.Tensor, "... length"]:
    """TransformerLens's RMSNorm in one kernel: ``(x / sqrt(mean(x**2) + eps))`` in float32,
    rounded to ``x.dtype``, times ``weight`` (rounded again), exactly as the eager module does."""
    kernels = _require()
    n_cols = x.shape[-1]
    flat = x.reshape(-1, n_cols).contiguous()
    out = torch.empty_like(flat)
    if flat.shape[0]:
        block = kernels.triton.next_power_of_2(n_cols)
        with _on_device_of(flat):
            kernels.rms_norm[(flat.shape[0],)](
                flat, weight.contiguous(), out, n_cols, 1.0 / n_cols, eps, BLOCK=block, num_warps=_warps(block),
                **NO_CONTRACTION,
            )
    return out.view(x.shape)


def silu_mul_add(
    gate: Float[torch.Tensor, "... d_mlp"], up: Float[torch.Tensor, "... d_mlp"], bias: Float[torch.Tensor, "d_mlp"]
) -> Float[torch.Tensor, "... d_mlp"]:
    """``silu(gate) * up + bias`` in one kernel, each of the three results rounded to the input
    dtype as the eager expression rounds it."""
    kernels = _require()
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} must match.")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        block = 2048
        with _on_device_of(gate):
            kernels.silu_mul_add[(kernels.triton.cdiv(n, block),)](
                gate, up, bias.to(gate.dtype).contiguous(), out, n, gate.shape[-1],
                BLOCK=block, ACCURATE_EXP=not _interpreting(), num_warps=8, **NO_CONTRACTION,
            )
    return out


def rotary(
    x: Float[torch.Tensor, "batch pos head d_head"],
    cos: Float[torch.Tensor, "table d_head"],
    signed_sin: Float[torch.Tensor, "table d_head"],
    offset: int,
    position_ids: Optional[Int[torch.Tensor, "batch pos"]] = None,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """RoPE in one kernel: ``x * cos + roll(x, d_head / 2) * signed_sin`` at positions
    ``offset + p`` (or ``position_ids``), with cos/sin rounded to ``x.dtype`` and each product
    rounded before the sum, as :func:`drope_lens.model.attention.apply_rotary` computes it.

    ``cos``/``signed_sin`` are float32 tables indexed by absolute position (the sine's first half
    negated, see :class:`drope_lens.model.attention.RotaryTable`)."""
    kernels = _require()
    batch, n_pos, n_heads, d_head = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    rows, width = batch * n_pos, n_heads * d_head
    if rows:
        has_ids = position_ids is not None
        ids = position_ids.reshape(-1).contiguous() if has_ids else x  # x: an unused placeholder pointer
        block = kernels.triton.next_power_of_2(width)
        with _on_device_of(x):
            kernels.rotary[(rows,)](
                x, cos, signed_sin, ids, out, n_pos, offset, width, d_head,
                BLOCK=block, HAS_POSITION_IDS=has_ids, num_warps=_warps(block), **NO_CONTRACTION,
            )
    return out
