"""Attention for HookedTransformer that is faithful to RoPE and DroPE Llama checkpoints.

One forward serves both variants; ``AttentionSettings.rotary`` decides whether q and k are
rotated. What it changes relative to stock TransformerLens 3.9 (see DESIGN.md for the measured
failures it avoids):

* rotary is the identity for DroPE (``hook_rot_q`` receives exactly the tensor given to
  ``hook_q_normed``, which for ``attention_type="nope"`` is ``hook_q``), never faked through
  sin/cos buffers that TransformerLens rebuilds past 2,048 tokens;
* the rotary table for RoPE grows with the input and has no ``n_ctx`` cap (O(T * d_head));
* DroPE's RMSNorms over the full ``n_heads * d_head`` query/key projection are owned here, with
  hook points ``hook_q_normed`` / ``hook_k_normed`` after them (``hook_q``/``hook_k`` stay the raw
  projections);
* ``softmax_scale`` replaces ``1/sqrt(d_head)``;
* scores and softmax are float32 in every model dtype;
* when nobody hooks ``hook_attn_scores`` / ``hook_pattern`` the scores are never materialised:
  ``torch.nn.functional.scaled_dot_product_attention`` computes the same thing.

Hook points and their shapes (as in TransformerLens): ``hook_q`` ``[batch, pos, head, d_head]``,
``hook_k``/``hook_v`` ``[batch, pos, kv_head, d_head]``, ``hook_q_normed``/``hook_k_normed`` (same
shapes), ``hook_rot_q``/``hook_rot_k`` (same; keys include cached positions),
``hook_attn_scores``/``hook_pattern`` ``[batch, head, query_pos, key_pos]`` (float32),
``hook_z`` ``[batch, pos, head, d_head]``, ``hook_result`` ``[batch, pos, head, d_model]`` when
``cfg.use_attn_result``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from transformer_lens.components import Attention, GroupedQueryAttention
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_offset_position_ids

from . import fused
from .hooks_state import is_hooked
from .linear import head_projection, output_projection

Backend = Literal["auto", "sdpa", "explicit"]


@dataclass(frozen=True)
class AttentionSettings:
    """What distinguishes a RoPE from a DroPE attention layer."""

    rotary: bool
    rope_theta: float
    norm_q: bool
    norm_k: bool
    has_norm_weights: bool
    scale: float  # multiplier applied to q.k before the softmax

    def __post_init__(self) -> None:
        if (self.norm_q or self.norm_k) and not self.has_norm_weights:
            raise ValueError("norm_q/norm_k need has_norm_weights=True")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")


class RotaryTable:
    """Float32 cos/sin of RoPE angles for positions ``0 .. length-1``, shared across layers.

    Computed exactly as Hugging Face ``LlamaRotaryEmbedding`` does (fp32 angles, then cast to the
    activation dtype), grown by doubling whenever a longer input arrives: memory is
    O(length * d_head), nothing is sized by ``n_ctx``.
    """

    _tables: dict[tuple[int, float, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def table(cls, d_head: int, theta: float, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and sign-folded ``sin`` of shape ``[>= length, d_head]`` (float32) on ``device``.

        The sine's first half is negated so that ``rotate_half(x) * sin == roll(x) * signed_sin``
        (negation is exact, so this is the same product HF computes).
        """
        key = (d_head, float(theta), str(device))
        table = cls._tables.get(key)
        if table is None or table[0].shape[0] < length:
            with torch.inference_mode(False):  # a table built under inference_mode must serve training too
                table = cls._build(d_head, theta, length, device, table)
            cls._tables[key] = table
        return table

    @staticmethod
    def _build(d_head: int, theta: float, length: int, device: torch.device, table) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 cos/signed sin for at least ``length`` positions (doubling ``table``'s size)."""
        size = max(length, 2 * (table[0].shape[0] if table is not None else 1024))
        inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head))
        pos = torch.arange(size, dtype=torch.float32, device=device)
        freqs = pos[:, None] * inv_freq.to(device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[:, : d_head // 2] *= -1
        return emb.cos(), sin


def apply_rotary(
    x: Float[torch.Tensor, "batch pos head d_head"],
    offset: int,
    theta: float,
    position_ids: Optional[Int[torch.Tensor, "batch pos"]] = None,
    fused_kernel: bool = True,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """Rotate ``x`` by the RoPE angles of its absolute positions (Llama's half-split pairing).

    Positions are ``offset .. offset + pos - 1``, or ``position_ids`` when given (left padding).
    No host-device synchronisation: table sizes come from shapes, not values. On CUDA, outside
    autograd, one fused kernel (:func:`drope_lens.fused.rotary`) computes the same roundings
    unless ``fused_kernel=False``.
    """
    n_pos = x.shape[1]
    # position ids never exceed the attention mask's length (cumsum - 1)
    cos, sin = RotaryTable.table(x.shape[-1], theta, offset + n_pos, x.device)
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


def _reduced_precision_math_allowed() -> bool:
    allowed = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", None)
    return bool(allowed()) if allowed is not None else True


class LensAttentionMixin:
    """Forward pass shared by :class:`LensAttention` and :class:`LensGroupedQueryAttention`."""

    settings: AttentionSettings
    backend: Backend
    fused_kernels: bool = True

    def init_lens(self, settings: AttentionSettings) -> None:
        """Attach the variant's settings, its q/k norms and the extra hook points."""
        self.settings = settings
        self.backend = "auto"
        self.hook_q_normed = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k_normed = HookPoint()  # [batch, pos, kv_head, d_head]
        if not hasattr(self, "hook_rot_q"):
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        n_kv = self.cfg.n_key_value_heads or self.cfg.n_heads
        if settings.has_norm_weights:
            self.q_norm = FullWidthRMSNorm(self.cfg.n_heads * self.cfg.d_head, self.cfg.eps, self.cfg.dtype)
            self.k_norm = FullWidthRMSNorm(n_kv * self.cfg.d_head, self.cfg.eps, self.cfg.dtype)
        else:
            self.q_norm = None
            self.k_norm = None
        # Rotary sin/cos buffers of the parent class are never used (RotaryTable replaces them).
        for name in ("rotary_sin", "rotary_cos"):
            if name in self._buffers:
                del self._buffers[name]

    def _position_ids(self, offset: int, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if attention_mask is None:
            return None
        return get_offset_position_ids(offset, attention_mask)

    def use_explicit_path(self) -> bool:
        """Whether scores/pattern must be materialised (they are hooked, or the backend says so)."""
        if self.backend == "explicit":
            return True
        if self.backend == "sdpa":
            return False
        return is_hooked(self.hook_attn_scores) or is_hooked(self.hook_pattern)

    def _mask(
        self,
        n_query: int,
        n_key: int,
        offset: int,
        attention_mask: Optional[torch.Tensor],
        device: torch.device,
    ) -> Optional[torch.Tensor]:
        """Boolean ``[batch|1, 1, query, key]`` mask (True = may attend), or None for plain causal."""
        if attention_mask is None and offset == 0 and n_query == n_key:
            return None
        q_pos = torch.arange(offset, offset + n_query, device=device)
        k_pos = torch.arange(n_key, device=device)
        mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.to(device).bool()[:, None, None, :]
        return mask

    def forward(  # type: ignore[override]
        self,
        query_input: Float[torch.Tensor, "batch pos d_model"],
        key_input: Float[torch.Tensor, "batch kv_pos d_model"],
        value_input: Float[torch.Tensor, "batch kv_pos d_model"],
        past_kv_cache_entry=None,
        additive_attention_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[Int[torch.Tensor, "batch offset_pos"]] = None,
        position_bias: Optional[torch.Tensor] = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        cfg = self.cfg
        settings = self.settings
        if query_input.ndim != 3:
            raise NotImplementedError(
                "drope_lens attention takes [batch, pos, d_model] inputs; use_split_qkv_input and "
                "use_attn_in are not supported."
            )
        if position_bias is not None:
            raise NotImplementedError("position_bias is not used by Llama models.")
        kv_w = getattr(self, "_W_K", None)
        if kv_w is not None:  # grouped-query attention: unexpanded kv heads
            w_k, b_k, w_v, b_v = self._W_K, self._b_K, self._W_V, self._b_V
        else:
            w_k, b_k, w_v, b_v = self.W_K, self.b_K, self.W_V, self.b_V

        q = self.hook_q(head_projection(query_input, self.W_Q, self.b_Q))
        k = self.hook_k(head_projection(key_input, w_k, b_k))
        v = self.hook_v(head_projection(value_input, w_v, b_v))

        if settings.norm_q:
            q = self.q_norm(q)
        if settings.norm_k:
            k = self.k_norm(k)
        q = self.hook_q_normed(q)
        k = self.hook_k_normed(k)

        if past_kv_cache_entry is not None:
            offset = past_kv_cache_entry.past_keys.size(1)
            k, v = past_kv_cache_entry.append(k, v)
        else:
            offset = 0

        if settings.rotary:
            fused_kernel = self.fused_kernels
            q = apply_rotary(q, offset, settings.rope_theta, self._position_ids(offset, attention_mask), fused_kernel)
            k = apply_rotary(k, 0, settings.rope_theta, self._position_ids(0, attention_mask), fused_kernel)
        q = self.hook_rot_q(q)
        k = self.hook_rot_k(k)

        n_rep = cfg.n_heads // k.shape[2]
        # [batch, head, pos, d_head]
        q_ = q.transpose(1, 2)
        k_ = k.transpose(1, 2)
        v_ = v.transpose(1, 2)
        if n_rep > 1:
            k_ = k_.repeat_interleave(n_rep, dim=1)
            v_ = v_.repeat_interleave(n_rep, dim=1)

        mask = self._mask(q.shape[1], k.shape[1], offset, attention_mask, q.device)
        if self.use_explicit_path() or additive_attention_mask is not None:
            scores = torch.matmul(q_.float(), k_.float().transpose(-1, -2)) * settings.scale
            if mask is None:
                mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
            if additive_attention_mask is not None:
                scores = scores + additive_attention_mask
            scores = self.hook_attn_scores(scores)
            pattern = torch.softmax(scores, dim=-1)
            # Rows with no visible key (left-padding queries) are NaN: make them zero, as TL does.
            pattern = torch.nan_to_num(pattern, nan=0.0)
            pattern = self.hook_pattern(pattern)
            z = torch.matmul(pattern.to(v_.dtype), v_)
        else:
            if mask is not None:
                # A query that sees no key (a left-padding position) would give NaN; let it
                # see every key instead. Such rows are padding and never feed real tokens.
                mask = mask | ~mask.any(dim=-1, keepdim=True)
            z = self._sdpa(q_, k_, v_, mask)
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]

        if not cfg.use_attn_result:
            return output_projection(z, self.W_O, self.b_O)
        result = self.hook_result(torch.einsum("bpnh,nhm->bpnm", z, self.W_O.to(z.dtype)))
        return result.sum(dim=2) + self.b_O

    def _sdpa(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Fused attention; q.k and the softmax are float32 for half-precision inputs.

        Every SDPA backend of torch >= 2.5 keeps them in float32: flash and memory-efficient
        kernels accumulate in float32 registers, and the math backend upcasts half inputs unless
        reduced-precision math was explicitly allowed, in which case we upcast ourselves (DroPE
        layer-1 q.k exceeds the float16 range).
        """
        dtype = v.dtype
        if dtype in (torch.float16, torch.bfloat16) and _reduced_precision_math_allowed():
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.settings.scale
        )
        return out.to(dtype)


class LensAttention(LensAttentionMixin, Attention):
    """Multi-head attention (n_kv_heads == n_heads) with drope_lens's forward."""


class LensGroupedQueryAttention(LensAttentionMixin, GroupedQueryAttention):
    """Grouped-query attention (SmolLM-style) with drope_lens's forward."""
