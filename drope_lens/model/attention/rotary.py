"""Rotary position embeddings as Hugging Face computes them, without an ``n_ctx`` cap.

RoPE only: DroPE layers skip this module (``AttentionSettings.rotary`` is False), so their
``hook_rot_q``/``hook_rot_k`` see the unrotated (normed) q and k.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float, Int

from .. import fused
from ..checkpoint import RopeScaling


def rope_inv_freq(d_head: int, theta: float, scaling: Optional[RopeScaling] = None) -> Float[torch.Tensor, "half"]:
    """RoPE inverse frequencies (float32, radians per position) for each pair of dimensions.

    Plain RoPE: ``theta ** (-2i / d_head)``. With ``scaling`` (``rope_type="llama3"``) adjusted
    with the same float32 operations, in the same order, as ``transformers``'
    ``_compute_llama3_parameters``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head))
    if scaling is None:
        return inv_freq
    factor = scaling.factor
    old_context_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context_len / scaling.low_freq_factor
    high_freq_wavelen = old_context_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


class RotaryTable:
    """Float32 cos/sin of RoPE angles for positions ``0 .. length-1``, shared across layers.

    Computed exactly as Hugging Face ``LlamaRotaryEmbedding`` does (fp32 angles, then cast to the
    activation dtype), grown by doubling whenever a longer input arrives: memory is
    O(length * d_head), nothing is sized by ``n_ctx``.
    """

    _tables: dict[tuple[int, float, Optional[RopeScaling], str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def table(
        cls, d_head: int, theta: float, length: int, device: torch.device, scaling: Optional[RopeScaling] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and sign-folded ``sin`` of shape ``[>= length, d_head]`` (float32) on ``device``.

        The sine's first half is negated so that ``rotate_half(x) * sin == roll(x) * signed_sin``
        (negation is exact, so this is the same product HF computes). ``scaling`` selects the
        Llama-3 frequencies (:func:`rope_inv_freq`); tables are cached per (d_head, theta,
        scaling, device).
        """
        key = (d_head, float(theta), scaling, str(device))
        table = cls._tables.get(key)
        if table is None or table[0].shape[0] < length:
            size = max(length, 2 * (table[0].shape[0] if table is not None else 1024))
            # Cached across calls: built as ordinary tensors even when the first call comes from
            # inside torch.inference_mode(), so that a later training forward can use them.
            with torch.inference_mode(False), torch.no_grad():
                inv_freq = rope_inv_freq(d_head, theta, scaling)
                pos = torch.arange(size, dtype=torch.float32, device=device)
                freqs = pos[:, None] * inv_freq.to(device)[None, :]
                emb = torch.cat((freqs, freqs), dim=-1)
                sin = emb.sin()
                sin[:, : d_head // 2] *= -1
                table = (emb.cos(), sin)
            cls._tables[key] = table
        return table


def apply_rotary(
    x: Float[torch.Tensor, "batch pos head d_head"],
    offset: int,
    theta: float,
    position_ids: Optional[Int[torch.Tensor, "batch pos"]] = None,
    fused_kernel: bool = True,
    scaling: Optional[RopeScaling] = None,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """Rotate ``x`` by the RoPE angles of its absolute positions (Llama's half-split pairing).

    Positions are ``offset .. offset + pos - 1``, or ``position_ids`` when given (left padding).
    ``scaling`` is the Llama-3 frequency adjustment (None: plain RoPE); the fused kernel reads
    the same cos/sin table as the eager code.
    No host-device synchronisation: table sizes come from shapes, not values. On CUDA, outside
    autograd, one fused kernel (:func:`drope_lens.model.fused.rotary`) computes the same roundings
    unless ``fused_kernel=False``.
    """
    n_pos = x.shape[1]
    # position ids never exceed the attention mask's length (cumsum - 1)
    cos, sin = RotaryTable.table(x.shape[-1], theta, offset + n_pos, x.device, scaling)
    if fused_kernel and fused.usable(x):
        return fused.rotary(x, cos, sin, offset, position_ids)
    if position_ids is None:
        cos, sin = cos[offset : offset + n_pos][None, :, None, :], sin[offset : offset + n_pos][None, :, None, :]
    else:
        cos, sin = cos[position_ids][:, :, None, :], sin[position_ids][:, :, None, :]
    # x * cos + rotate_half(x) * sin, where rotate_half(x) * sin == roll(x, d/2) * signed sin
    # exactly; each product is rounded to x.dtype before the sum, as in HF, so bf16 matches it.
    # The rolled product is written half by half into one buffer (no rolled copy of x) and the
    # sum is in place: 7 passes over x-sized memory instead of 9.
    half = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:  # training: out= has no autograd; same arithmetic
        return x * cos + x.roll(half, dims=-1) * sin
    rolled = torch.empty_like(x)
    torch.mul(x[..., half:], sin[..., :half], out=rolled[..., :half])
    torch.mul(x[..., :half], sin[..., half:], out=rolled[..., half:])
    return torch.mul(x, cos).add_(rolled)
