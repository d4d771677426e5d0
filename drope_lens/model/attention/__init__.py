"""Attention for HookedTransformer that is faithful to RoPE and DroPE Llama checkpoints, by role:

* :mod:`.settings`: what distinguishes a RoPE from a DroPE layer (:class:`AttentionSettings`);
* :mod:`.rotary`: RoPE angles and rotation, as Hugging Face computes them;
* :mod:`.qk_norm`: DroPE's full-width q/k RMSNorm;
* :mod:`.kernels`: the visibility mask and softmax(q.k) v, explicit (hookable) or fused (SDPA);
* :mod:`.layer`: the TransformerLens attention components that put these together, with hooks.
"""

from .kernels import explicit_attention, fused_attention, visibility_mask
from .layer import LensAttention, LensAttentionMixin, LensGroupedQueryAttention
from .qk_norm import FullWidthRMSNorm
from .rotary import RotaryTable, apply_rotary, rope_inv_freq
from .settings import AttentionSettings, Backend

__all__ = [
    "AttentionSettings", "Backend", "FullWidthRMSNorm", "LensAttention", "LensAttentionMixin",
    "LensGroupedQueryAttention", "RotaryTable", "apply_rotary", "explicit_attention",
    "fused_attention", "rope_inv_freq", "visibility_mask",
]
