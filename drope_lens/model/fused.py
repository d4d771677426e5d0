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
        triton=triton,
        rms_norm=Launcher(rms_norm_kernel),
        silu_mul_add=Launcher(silu_mul_add_kernel),
        rotary=Launcher(rotary_kernel),
    )


def _arg_key(arg) -> tuple:
    """What Triton may specialise a launch argument on, or more: a tensor's dtype and whether its
    address is 16-byte aligned; an integer's equality to 1, divisibility by 16 and whether it fits
    in 32 bits; floats are never specialised; anything else by value."""
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.data_ptr() % 16 == 0)
    if isinstance(arg, bool):
        return ("bool", arg)
    if isinstance(arg, int):
        return ("int", arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31)
    if isinstance(arg, float):
        return ("float",)
    return ("value", arg)


class Launcher:
    """``kernel[(grid,)](*args, **meta)`` with less host work per launch, same compiled kernel.

    Triton's ``JITFunction.run`` binds the arguments, specialises each one, hashes the options
    and looks the compiled kernel up on every launch: 54 us per launch under cProfile on the H200
    machine (``docs/gpu_evidence/profiles_h200_s23.txt``), five launches per layer. The first
    launch for a key goes through Triton as usual and keeps the ``CompiledKernel`` it returns;
    later launches with the same key call its launcher directly. The key (:func:`_arg_key` of
    each positional argument, the keyword values, the current device and Triton's debug and
    instrumentation settings) holds everything Triton specialises on, so a launch runs exactly the
    binary Triton would pick. Triton's own path is kept whenever launch hooks (profilers) or
    pre-run hooks are installed, in interpreter mode, or when the returned object lacks the
    launcher API of Triton 3.x. ``launches`` / ``direct_launches`` count calls (for tests).
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self._compiled: dict = {}
        self.launches = 0
        self.direct_launches = 0
        try:
            from triton import knobs
            from triton.runtime.driver import driver

            self._knobs, self._driver = knobs, driver
        except Exception:  # older Triton: always Triton's own path
            self._knobs = self._driver = None

    def _direct_allowed(self) -> bool:
        knobs = self._knobs
        if knobs is None or _interpreting() or getattr(self.kernel, "pre_run_hooks", None):
            return False
        runtime = knobs.runtime
        for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
            if hook is not None and getattr(hook, "calls", True):  # an empty HookChain is fine
                return False
        return True

    def __call__(self, grid: int, *args, **meta) -> None:
        self.launches += 1
        if not self._direct_allowed():
            self.kernel[(grid,)](*args, **meta)
            return
        knobs = self._knobs
        device = self._driver.active.get_current_device()
        key = (
            device, tuple(map(_arg_key, args)), tuple(meta.items()),
            knobs.runtime.debug, knobs.compilation.instrumentation_mode,
        )
        entry = self._compiled.get(key)
        if entry is None:
            compiled = self.kernel[(grid,)](*args, **meta)
            names = [param.name for param in self.kernel.params]
            try:
                tail = tuple(meta[name] for name in names[len(args):])
                entry = (compiled.run, compiled.function, compiled.packed_metadata, tail)
            except (AttributeError, KeyError):  # not the Triton 3.x launcher API
                entry = False
            self._compiled[key] = entry
            return
        if entry is False:
            self.kernel[(grid,)](*args, **meta)
            return
        run, function, packed_metadata, tail = entry
        stream = self._driver.active.get_current_stream(device)
        run(grid, 1, 1, stream, function, packed_metadata, None, None, None, *args, *tail)
        self.direct_launches += 1


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
    if _kernels() is None:  # cached: without Triton (CPU builds of torch) this is the only check
        return False
    on_device = _interpreting()
    for t in tensors:
        if not (on_device or t.is_cuda) or t.dtype not in _FLOAT_DTYPES:  # the kernels compute in float32
            return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return True


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
            kernels.rms_norm(
                flat.shape[0], flat, weight.contiguous(), out, n_cols, 1.0 / n_cols, eps, BLOCK=block, num_warps=_warps(block),
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
            kernels.silu_mul_add(
                kernels.triton.cdiv(n, block), gate, up, bias.to(gate.dtype).contiguous(), out, n, gate.shape[-1],
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
            kernels.rotary(
                rows, x, cos, signed_sin, ids, out, n_pos, offset, width, d_head,
                BLOCK=block, HAS_POSITION_IDS=has_ids, num_warps=_warps(block), **NO_CONTRACTION,
            )
    return out
