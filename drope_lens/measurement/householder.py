"""The Householder reflector every tridiagonalisation of :mod:`drope_lens.measurement.spectrum` uses."""

from __future__ import annotations

import torch
from jaxtyping import Float


def reflector(
    x: Float[torch.Tensor, "batch m"],
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch m"], Float[torch.Tensor, "batch"]]:
    """``(alpha, v, tau)`` per row of ``x`` with ``(I - tau v v^T) x = alpha e1``: ``alpha`` takes the
    sign opposite to ``x[0]`` (no cancellation in ``v = x - alpha e1``), ``tau = 2 / v.v``, and
    ``tau = 0`` (no reflection) where ``x`` is zero. Float64 in, float64 out."""
    x0 = x[:, 0]
    norm = torch.linalg.vector_norm(x, dim=1)
    alpha = norm.copysign(x0).neg_()
    v = x.clone()
    v[:, 0] -= alpha
    vv = 2.0 * norm * (norm + x0.abs())  # v . v
    tau = torch.where(vv > 0, 2.0 / vv, 0.0)
    return alpha, v, tau
