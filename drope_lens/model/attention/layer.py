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
* Llama-3's ``llama3`` RoPE frequency adjustment, q/k/v biases (Qwen2) and a sliding-window mask
  (Mistral, Qwen2: ``settings.sliding_window``) are computed as ``transformers`` computes them;
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

from typing import Optional

import torch
from jaxtyping import Float, Int
from transformer_lens.components import Attention, GroupedQueryAttention
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_offset_position_ids

from ..hooks_state import is_hooked, through
from ..linear import head_projection, output_projection
from .kernels import (explicit_attention, fused_attention, padded_causal_applies, padded_causal_attention,
                      visibility_mask)
from .qk_norm import FullWidthRMSNorm
from .rotary import apply_rotary
from .settings import AttentionSettings, Backend


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
        params = self._parameters  # one dict lookup each instead of nn.Module.__getattr__
        kv = "_" if "_W_K" in params else ""  # grouped-query attention: unexpanded kv heads
        w_k, b_k, w_v, b_v = params[kv + "W_K"], params[kv + "b_K"], params[kv + "W_V"], params[kv + "b_V"]

        q = through(self.hook_q, head_projection(query_input, params["W_Q"], params["b_Q"]))
        k = through(self.hook_k, head_projection(key_input, w_k, b_k))
        v = through(self.hook_v, head_projection(value_input, w_v, b_v))

        if settings.norm_q:
            q = self.q_norm(q)
        if settings.norm_k:
            k = self.k_norm(k)
        q = through(self.hook_q_normed, q)
        k = through(self.hook_k_normed, k)

        offset = past_kv_cache_entry.past_keys.size(1) if past_kv_cache_entry is not None else 0
        # A cache that stores rotated keys (drope_lens.measurement.generation's) gets each key
        # rotated once, when it is appended, at the position the whole-cache rotation would give it
        # (the query's: ``cumsum(mask) - 1`` of a key never changes as the mask grows), instead of
        # every cached key again at every step. Elementwise, so the same numbers.
        rotated_cache = settings.rotary and getattr(past_kv_cache_entry, "stores_rotated_keys", False)
        if settings.rotary:
            fused_kernel = self.fused_kernels
            scaling = settings.rope_scaling
            q_positions = self._position_ids(offset, attention_mask)
            q = apply_rotary(q, offset, settings.rope_theta, q_positions, fused_kernel, scaling)
            if rotated_cache:
                k = apply_rotary(k, offset, settings.rope_theta, q_positions, fused_kernel, scaling)
        if past_kv_cache_entry is not None:
            k, v = past_kv_cache_entry.append(k, v)
        if settings.rotary and not rotated_cache:
            k = apply_rotary(k, 0, settings.rope_theta, self._position_ids(0, attention_mask), fused_kernel, scaling)
        q = through(self.hook_rot_q, q)
        if rotated_cache and is_hooked(self.hook_rot_k):
            k = k.clone()  # the cache's own buffer: a hook editing it in place must not reach the cache
        k = through(self.hook_rot_k, k)

        n_rep = cfg.n_heads // k.shape[2]
        # [batch, head, pos, d_head]
        q_ = q.transpose(1, 2)
        k_ = k.transpose(1, 2)
        v_ = v.transpose(1, 2)
        if n_rep > 1:
            k_ = k_.repeat_interleave(n_rep, dim=1)
            v_ = v_.repeat_interleave(n_rep, dim=1)

        explicit = self.use_explicit_path() or additive_attention_mask is not None
        if not explicit and padded_causal_applies(q_, k_, offset, attention_mask, settings.sliding_window):
            z = padded_causal_attention(q_, k_, v_, attention_mask, settings.scale)
        else:
            mask = visibility_mask(q.shape[1], k.shape[1], offset, attention_mask, settings.sliding_window, q.device)
            if explicit:
                z = explicit_attention(q_, k_, v_, mask, settings.scale, additive_attention_mask,
                                       self.hook_attn_scores, self.hook_pattern)
            else:
                z = fused_attention(q_, k_, v_, mask, settings.scale)
        z = through(self.hook_z, z.transpose(1, 2))  # [batch, pos, head, d_head]

        if not cfg.use_attn_result:
            return output_projection(z, params["W_O"], params["b_O"])
        result = self.hook_result(torch.einsum("bpnh,nhm->bpnm", z, self.W_O.to(z.dtype)))
        return result.sum(dim=2) + self.b_O

class LensAttention(LensAttentionMixin, Attention):
    """Multi-head attention (n_kv_heads == n_heads) with drope_lens's forward."""


class LensGroupedQueryAttention(LensAttentionMixin, GroupedQueryAttention):
    """Grouped-query attention (SmolLM, Llama-3, Qwen2, Mistral) with drope_lens's forward."""
