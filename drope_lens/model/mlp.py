"""Gated (SwiGLU) MLP for HookedTransformer without per-forward weight copies.

Stock TransformerLens 3.9 calls ``W.T.contiguous()`` on every MLP weight in every forward. The
weights drope_lens loads are views of the checkpoint's ``[out, in]`` layout, so the projection
is a single GEMM on the original storage; it also accepts bitsandbytes 4-bit weights. Hook points
are those of TransformerLens ``GatedMLP``: ``hook_pre`` (gate, before the activation),
``hook_pre_linear`` (up projection), ``hook_post`` (their product), all ``[batch, pos, d_mlp]``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens.components.mlps.gated_mlp import GatedMLP

from . import fused
from .hooks_state import through
from .linear import matrix_projection


class LensGatedMLP(GatedMLP):
    """``mlp_out = (act(x @ W_gate) * (x @ W_in) + b_in) @ W_out + b_out``.

    For SiLU on CUDA outside autograd, ``act(pre) * pre_linear + b_in`` is one fused kernel with
    the same roundings (:func:`drope_lens.model.fused.silu_mul_add`); the hooks see the same tensors.
    """

    fused_kernels: bool = True

    def forward(  # type: ignore[override]
        self, x: Float[torch.Tensor, "batch pos d_model"]
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        pre = through(self.hook_pre, matrix_projection(x, self.W_gate))
        pre_linear = through(self.hook_pre_linear, matrix_projection(x, self.W_in))
        # act(pre) and act(pre) * pre_linear are each rounded to the model dtype, as in HF; adding
        # the zero bias is exact.
        if (
            self.fused_kernels
            and self.cfg.act_fn == "silu"
            and pre.dtype == pre_linear.dtype
            and fused.usable(pre, pre_linear, self.b_in)
        ):
            post = through(self.hook_post, fused.silu_mul_add(pre, pre_linear, self.b_in))
        else:
            post = through(self.hook_post, self.act_fn(pre) * pre_linear + self.b_in)
        return matrix_projection(post, self.W_out, self.b_out)
