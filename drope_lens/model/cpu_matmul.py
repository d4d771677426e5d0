"""Float32 weight products on the CPU through oneDNN's matmul instead of MKL's sgemm.

``torch.nn.functional.linear`` on the CPU in float32 calls MKL's ``sgemm``. On the 2-core AMD EPYC
(AVX-512) of this project's CPU machine, oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
the op TorchInductor's CPU backend emits for ``nn.Linear``) computes the same products faster at
the bundled toy pair's shapes from 64 rows up (the unembedding 1.7x from 512 rows; one shape ties): median milliseconds, MKL / oneDNN, session 29
(``[rows, in] x [in, out]``):

- 64 rows: 256 -> 256 0.065 / 0.061; 256 -> 704 0.183 / 0.161; 704 -> 256 0.157 / 0.138;
  256 -> 4007 0.845 / 0.874
- 1,024 rows: 0.693 / 0.664; 2.128 / 1.783; 1.857 / 1.776; 21.91 / 11.26
- 16,384 rows: 12.63 / 10.96; 33.05 / 27.95; 33.80 / 29.25; 301.5 / 173.5

The whole ``drope-lens study`` on the toy pair, one run without and one with it, twice on that
machine: 158.5 -> 152.8 s (CPU time 300.9 -> 284.1 s; its weight products only) and 171.3 -> 166.5 s
(324.1 -> 314.3 s; every product, the unembedding too), about 3-5% less CPU time. Below
:data:`MIN_ROWS` rows (decoding steps) MKL is as fast or faster and is kept. Other x86-64 CPUs were
not measured (on Intel's own CPUs MKL may do as well); ARM machines keep ``F.linear``.

What changes: only the order in which float32 products are summed, so a result may differ from
``F.linear``'s in its last bits (tests/test_cpu_matmul.py bounds the difference; the comparisons
with ``transformers`` keep their tolerances). Used only where :func:`usable` says so: float32 CPU
tensors, plain contiguous weights, no autograd graph through them, the op present in this torch.
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
#: Products with fewer rows than this stay on ``F.linear`` (MKL is as fast there).
MIN_ROWS = 64

#: Only where it was measured faster: x86-64 (on ARM, oneDNN competes with other BLAS libraries).
_OP = (getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
       if platform.machine().lower() in ("x86_64", "amd64") else None)
_failed = False


def usable(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether :func:`linear` sends this product to oneDNN: float32 on the CPU, at least
    :data:`MIN_ROWS` rows, a plain contiguous ``[out, in]`` weight, no autograd graph through it,
    and oneDNN present and enabled (``torch.backends.mkldnn.enabled``)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.ndim < 2 or x.shape[-1] == 0 or x.numel() < MIN_ROWS * x.shape[-1]:
        return False
    if not ENABLED or _failed or _OP is None or not torch.backends.mkldnn.is_available():
        return False
    if not torch.backends.mkldnn.enabled:
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
