"""The attention arithmetic itself: which keys a query sees, and softmax(q.k) v two ways.

Scores and the softmax are float32 in every model dtype. :func:`explicit_attention` materialises
scores and pattern (for hooks on ``hook_attn_scores`` / ``hook_pattern``);
:func:`fused_attention` lets ``torch.nn.functional.scaled_dot_product_attention`` compute the same
thing without them.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int


def visibility_mask(
    n_query: int,
    n_key: int,
    offset: int,
    attention_mask: Optional[Int[torch.Tensor, "batch key"]],
    sliding_window: Optional[int],
    device: torch.device,
) -> Optional[Bool[torch.Tensor, "batch_or_1 1 query key"]]:
    """Boolean ``[batch|1, 1, query, key]`` mask (True = may attend), or None for plain causal.

    Query ``i`` sits at index ``offset + i`` of the key sequence (cached keys first). With a
    sliding window W a query at index p sees keys p - W < k <= p (indices in the padded
    sequence, as transformers' masks count them); the window is skipped when no query could
    reach past it."""
    windowed = sliding_window is not None and offset + n_query > sliding_window
    if attention_mask is None and offset == 0 and n_query == n_key and not windowed:
        return None
    q_pos = torch.arange(offset, offset + n_query, device=device)
    k_pos = torch.arange(n_key, device=device)
    visible = k_pos[None, :] <= q_pos[:, None]
    if windowed:
        visible = visible & (k_pos[None, :] > q_pos[:, None] - sliding_window)
    mask = visible[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask.to(device).bool()[:, None, None, :]
    return mask


def explicit_attention(
    q: Float[torch.Tensor, "batch head query d_head"],
    k: Float[torch.Tensor, "batch head key d_head"],
    v: Float[torch.Tensor, "batch head key d_head"],
    mask: Optional[Bool[torch.Tensor, "batch_or_1 1 query key"]],
    scale: float,
    additive_mask: Optional[torch.Tensor],
    hook_scores: Callable[[torch.Tensor], torch.Tensor],
    hook_pattern: Callable[[torch.Tensor], torch.Tensor],
) -> Float[torch.Tensor, "batch head query d_head"]:
    """softmax(scale * q.k + mask) v with float32 scores and pattern passed through the hooks.

    Rows with no visible key (left-padding queries) are NaN after the softmax: they are made
    zero, as TransformerLens does."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is None:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    if additive_mask is not None:
        scores = scores + additive_mask
    scores = hook_scores(scores)
    pattern = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    pattern = hook_pattern(pattern)
    return torch.matmul(pattern.to(v.dtype), v)


def _reduced_precision_math_allowed() -> bool:
    allowed = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", None)
    return bool(allowed()) if allowed is not None else True


def _float32_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v upcast to float32 when they are half precision and reduced-precision SDPA math is
    allowed (see :func:`fused_attention`); unchanged otherwise."""
    if v.dtype in (torch.float16, torch.bfloat16) and _reduced_precision_math_allowed():
        return q.float(), k.float(), v.float()
    return q, k, v


def fused_attention(
    q: Float[torch.Tensor, "batch head query d_head"],
    k: Float[torch.Tensor, "batch head key d_head"],
    v: Float[torch.Tensor, "batch head key d_head"],
    mask: Optional[Bool[torch.Tensor, "batch_or_1 1 query key"]],
    scale: float,
) -> Float[torch.Tensor, "batch head query d_head"]:
    """Fused attention; q.k and the softmax are float32 for half-precision inputs.

    A query that sees no key (a left-padding position) would give NaN; it sees every key
    instead (such rows are padding and never feed real tokens). Every SDPA backend of
    torch >= 2.5 keeps q.k and the softmax in float32: flash and memory-efficient kernels
    accumulate in float32 registers, and the math backend upcasts half inputs unless
    reduced-precision math was explicitly allowed, in which case we upcast ourselves (DroPE
    layer-1 q.k exceeds the float16 range).
    """
    if mask is not None:
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    dtype = v.dtype
    q, k, v = _float32_math(q, k, v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale)
    return out.to(dtype)


def padded_causal_applies(
    q: Float[torch.Tensor, "batch head query d_head"],
    k: Float[torch.Tensor, "batch head key d_head"],
    offset: int,
    attention_mask: Optional[Int[torch.Tensor, "batch key"]],
    sliding_window: Optional[int],
) -> bool:
    """Whether :func:`padded_causal_attention` computes this forward: a padded batch's first
    forward (no cached keys, queries = keys, no sliding window reached) on the CPU, with the fused
    kernel enabled and the layout it takes (last dimension contiguous)."""
    n_query, n_key = q.shape[-2], k.shape[-2]
    return (attention_mask is not None and offset == 0 and n_query == n_key and q.device.type == "cpu"
            and (sliding_window is None or n_query <= sliding_window)
            and attention_mask.shape == (q.shape[0], n_key) and q.stride(-1) == 1 and k.stride(-1) == 1
            and torch.backends.cuda.flash_sdp_enabled() and _CPU_FLASH is not None)


def padded_causal_attention(
    q: Float[torch.Tensor, "batch head query d_head"],
    k: Float[torch.Tensor, "batch head key d_head"],
    v: Float[torch.Tensor, "batch head key d_head"],
    attention_mask: Int[torch.Tensor, "batch key"],
    scale: float,
) -> Float[torch.Tensor, "batch head query d_head"]:
    """:func:`fused_attention` of a padded prefill on the CPU, without the ``[batch, 1, query, key]`` mask.

    The mask :func:`visibility_mask` builds there (causal AND key not padding) is the CPU flash
    kernel's own causal mask plus a key-padding row ``[batch, 1, 1, key]`` (0 or -inf) broadcast over
    queries: the kernel then skips the blocks above the diagonal (half the work at long lengths)
    and no ``[batch, query, key]`` tensor is allocated. Every query that sees a key gets the same
    floating-point result as :func:`fused_attention` (the skipped blocks only ever added exact
    zeros; tests/test_attention_kernels.py compares bit for bit); a query that sees none (left
    padding) is zero, as in :func:`explicit_attention`, where :func:`fused_attention` lets it see
    every key (such rows are padding either way and never feed a real token).
    """
    dtype = v.dtype
    q, k, v = _float32_math(q, k, v)
    hidden = torch.zeros(q.shape[0], 1, 1, k.shape[-2], dtype=q.dtype, device=q.device)
    hidden.masked_fill_(~attention_mask.to(q.device).bool()[:, None, None, :], float("-inf"))
    out = _CPU_FLASH(q, k, v, 0.0, True, attn_mask=hidden.expand(-1, -1, q.shape[-2], -1), scale=scale)[0]
    return out.to(dtype)


#: The CPU flash-attention kernel that ``scaled_dot_product_attention`` dispatches to on the CPU; called
#: directly because the public function refuses ``is_causal`` together with a mask.
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
