"""Float32 weight products on the CPU through oneDNN's matmul instead of MKL's sgemm.

``torch.nn.functional.linear`` on the CPU in float32 calls MKL's ``sgemm``. On the 2-core AMD EPYC
(AVX-512) of this project's CPU machine, oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
the op TorchInductor's CPU backend emits for ``nn.Linear``) computes the toy pair's products faster
once they have a couple of thousand rows. oneDNN first builds a kernel for each new shape, about
0.5-1 ms, which it then keeps; a forward reuses it in every layer. Median milliseconds over 12 row
counts from the one named, session 29: oneDNN on a new shape / again / MKL (``[rows, in] x [in, out]``):

- 256 rows: 256 -> 704 1.16 / 0.60 / 0.70; the unembedding 256 -> 4007 4.22 / 3.48 / 7.29
- 1,024 rows: 256 -> 256 1.61 / 1.09 / 1.16; 256 -> 704 2.86 / 2.13 / 2.42; 4007: 13.64 / 12.16 / 22.78
- 2,048 rows: 256 -> 256 2.31 / 1.70 / 2.58; 256 -> 704 4.77 / 4.12 / 5.71; 704 -> 256 5.21 / 4.17 /
  5.22; 4007: 25.65 / 29.14 / 45.04
- 8,192 rows: 256 -> 704 16.94 / 20.72 / 28.05; 4007: 144.5 / 144.6 / 219.7

So products of at least :data:`MIN_ROWS` (2,048) rows go to oneDNN: the Exp 10 prefills and the
perplexity batches. Task prompts (16 prompts of a few dozen tokens, a new row count almost every
batch) and decoding steps stay on MKL: with a threshold of 64 rows, the Exp 4/5 and Exp 6 ablations
took 21.7 and 23.3 s, 21.3 and 22.7 s in two README jobs against 19.3 and 19.8 s without oneDNN
(runs on this machine vary by about 10%). With 2,048 rows, the whole ``drope-lens study`` in one
process, oneDNN on then off: 163.9 s wall / 300.3 s CPU against 180.2 / 321.1 s (Exp 10 92.5 /
180.6 against 100.2 / 196.0; the ablations 18.9 and 19.3 s against 19.7 and 20.2 s). Other x86-64
CPUs were not measured (on Intel's own CPUs MKL may do as well); ARM machines keep ``F.linear``.

What changes: only the order in which float32 products are summed, so a result may differ from
``F.linear``'s in its last bits (tests/test_cpu_matmul.py bounds the difference; the comparisons
with ``transformers`` keep their tolerances). Used only where :func:`usable` says so: float32 CPU
tensors, plain contiguous weights, no autograd graph through them (the op registers no autograd
kernel: backpropagating through it would silently give no gradient), the op present in this torch.
``ENABLED = False`` (module attribute) gives every product back to ``F.linear`` (MKL), the
function ``transformers`` calls.
"""

from __future__ import annotations

import platform
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float

#: Route eligible products through oneDNN (set False to keep every product on ``F.linear``).
ENABLED = True
#: Products with fewer rows stay on ``F.linear`` (there oneDNN's per-shape kernel build costs more than it saves).
MIN_ROWS = 2048

#: Only where it was measured faster: x86-64 (on ARM, oneDNN competes with other BLAS libraries).
_OP = (getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
       if platform.machine().lower() in ("x86_64", "amd64") else None)
_failed = False


def _switched_on() -> bool:
    """The process-wide conditions: :data:`ENABLED`, the op present and not failed, oneDNN available
    and enabled (``torch.backends.mkldnn.enabled``)."""
    return (ENABLED and not _failed and _OP is not None and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def library() -> str:
    """Which library multiplies float32 weights on the CPU in this process: ``"onednn"`` (products
    of :data:`MIN_ROWS` rows or more) or ``"F.linear"`` (every product); ``meta.json`` records it."""
    return "onednn" if _switched_on() else "F.linear"


def usable(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether :func:`linear` sends this product to oneDNN: float32 on the CPU, at least
    :data:`MIN_ROWS` rows, a plain contiguous ``[out, in]`` weight, no autograd graph through it,
    and oneDNN present and enabled (``torch.backends.mkldnn.enabled``)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.ndim < 2 or x.shape[-1] == 0 or x.numel() < MIN_ROWS * x.shape[-1]:
        return False
    if not _switched_on():
        return False
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.ndim != 2 or not weight.is_contiguous():
        return False
    if bias is not None and (bias.dtype != torch.float32 or bias.ndim != 1):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    return True


def linear(
    x: Float[torch.Tensor, "... d_in"], weight: Float[torch.Tensor, "d_out d_in"], bias: Optional[torch.Tensor] = None,
) -> Float[torch.Tensor, "... d_out"]:
    """``F.linear(x, weight, bias)``, through oneDNN where :func:`usable`."""
    global _failed
    if usable(x, weight, bias):
        try:
            flat = x.reshape(-1, x.shape[-1])
            return _OP(flat, weight, bias, "none", [], "").view(*x.shape[:-1], weight.shape[0])
        except RuntimeError as exc:  # an op this torch build cannot run: MKL from now on
            _failed = True
            warnings.warn(f"oneDNN matmul unavailable ({exc}); CPU products use F.linear.", stacklevel=2)
    return F.linear(x, weight, bias)
