"""DroPE's q/k RMSNorm over the full query/key projection."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float


class FullWidthRMSNorm(nn.Module):
    """DroPE's q/k norm: RMSNorm over the whole ``n_heads * d_head`` projection.

    Computed as ``torch.nn.RMSNorm`` (what upstream DroPE uses) computes it: in float32, weight
    included, rounded once to the activation dtype.
    """

    def __init__(self, length: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.length = length
        self.eps = eps
        self.w = nn.Parameter(torch.ones(length, dtype=dtype))

    def forward(self, x: Float[torch.Tensor, "batch pos head d_head"]) -> Float[torch.Tensor, "batch pos head d_head"]:
        flat = x.flatten(-2)
        out = F.rms_norm(flat.float(), (self.length,), self.w.float(), self.eps)
        return out.to(x.dtype).unflatten(-1, x.shape[-2:])
