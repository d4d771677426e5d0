"""RMSNorm for HookedTransformer that runs as one fused kernel on CUDA when nobody hooks it.

Same parameters, hook points and arithmetic as TransformerLens 3.9's ``RMSNorm``
(``x / sqrt(mean(x**2) + eps)`` in float32, rounded to the model dtype, times ``w``); see
:mod:`drope_lens.model.fused` for what "same arithmetic" means for the fused kernel.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens.components import RMSNorm

from . import fused
from .hooks_state import is_hooked


class LensRMSNorm(RMSNorm):
    """TransformerLens ``RMSNorm`` with a fused CUDA path.

    The eager path (TransformerLens's own forward) runs whenever ``hook_scale`` or
    ``hook_normalized`` has a hook, so caching or patching them sees exactly what stock
    TransformerLens computes.
    """

    fused_kernels: bool = True

    def forward(self, x: Float[torch.Tensor, "... length"]) -> Float[torch.Tensor, "... length"]:  # type: ignore[override]
        if (
            self.fused_kernels
            and x.dtype == self.cfg.dtype
            and x.device == self.w.device
            and not is_hooked(self.hook_scale)
            and not is_hooked(self.hook_normalized)
            and fused.usable(x, self.w)
        ):
            return fused.rms_norm(x, self.w, self.eps)
        return super().forward(x)
