"""Copy-free projections for TransformerLens-shaped weights, full precision or bitsandbytes 4-bit.

drope_lens stores every weight as a *view* of the checkpoint's ``nn.Linear`` layout
(``[out_features, in_features]``, contiguous). ``W_Q`` is then ``[head, d_model, d_head]`` as
TransformerLens expects, but ``W_Q.permute(0, 2, 1).reshape(-1, d_model)`` is free and is exactly
the checkpoint's ``q_proj.weight``, so a projection is one GEMM with no weight copy and the same
memory layout, hence the same bf16 accumulation order, as Hugging Face. (Float32 products on the
CPU go through oneDNN instead, see :mod:`drope_lens.model.cpu_matmul`.)
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from .cpu_matmul import linear as dense


def is_4bit(weight: torch.Tensor) -> bool:
    """True for a bitsandbytes ``Params4bit`` (quantised, ``quant_state`` attached)."""
    return getattr(weight, "quant_state", None) is not None


def matmul_4bit(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for a quantised ``[out, in]`` weight (dequantised to ``x.dtype``)."""
    import bitsandbytes as bnb

    return bnb.matmul_4bit(x, weight.t(), bias=None, quant_state=weight.quant_state)


def head_projection(
    x: Float[torch.Tensor, "batch pos d_model"],
    weight: torch.Tensor,
    bias: Float[torch.Tensor, "head d_head"],
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """Project the residual stream to per-head vectors: ``einsum('bpm,nmh->bpnh') + bias``.

    ``weight`` is ``[head, d_model, d_head]`` (any strides) or a 4-bit ``[head*d_head, d_model]``.
    """
    n_heads, d_head = bias.shape
    if is_4bit(weight):
        out = matmul_4bit(x, weight).unflatten(-1, (n_heads, d_head))
        return out + bias
    as_linear = weight.permute(0, 2, 1).reshape(n_heads * d_head, weight.shape[1])
    return dense(x, as_linear, bias.reshape(-1)).unflatten(-1, (n_heads, d_head))


def output_projection(
    z: Float[torch.Tensor, "batch pos head d_head"],
    weight: torch.Tensor,
    bias: Float[torch.Tensor, "d_model"],
) -> Float[torch.Tensor, "batch pos d_model"]:
    """Sum of every head's write to the residual stream: ``einsum('bpnh,nhm->bpm') + bias``.

    ``weight`` is ``[head, d_head, d_model]`` (any strides) or a 4-bit ``[d_model, head*d_head]``.
    """
    flat = z.reshape(*z.shape[:-2], -1)
    if is_4bit(weight):
        return matmul_4bit(flat, weight) + bias
    n_heads, d_head, d_model = weight.shape
    as_linear = weight.permute(2, 0, 1).reshape(d_model, n_heads * d_head)
    return dense(flat, as_linear, bias)


def matrix_projection(
    x: Float[torch.Tensor, "batch pos d_in"],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> Float[torch.Tensor, "batch pos d_out"]:
    """``x @ W (+ bias)`` for a TransformerLens ``[d_in, d_out]`` weight or a 4-bit ``[d_out, d_in]``."""
    if is_4bit(weight):
        out = matmul_4bit(x, weight)
        return out if bias is None else out + bias
    return dense(x, weight.T, bias)
