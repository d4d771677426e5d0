"""drope_lens.hooks: hook factories for capture and intervention on TransformerLens models.

Every factory returns plain ``(hook_name, fn)`` pairs, usable with ``model.run_with_hooks``,
``with model.hooks(fwd_hooks=...)``, ``run_with_cache`` and ``transformer_lens.patching``.
"""

from .batched import batched_zero_dims, batched_zero_qk, by_row_groups
from .capture import capture_bos_norms, capture_dim_norms, capture_positions, capture_token_mean_norm, sequence_axis_norm
from .interventions import ablate_positions, replace_topk_with_mean, zero_dims
from .names import TENSORS, parse_layer, qkv_hook
from .norms import first_position_norms, position_norms, shared_norms
from .attention_stats import capture_attention_stats

__all__ = [
    "TENSORS",
    "ablate_positions",
    "batched_zero_dims",
    "batched_zero_qk",
    "by_row_groups",
    "capture_bos_norms",
    "capture_dim_norms",
    "capture_positions",
    "capture_token_mean_norm",
    "first_position_norms",
    "parse_layer",
    "position_norms",
    "qkv_hook",
    "replace_topk_with_mean",
    "sequence_axis_norm",
    "shared_norms",
    "zero_dims",
    "capture_attention_stats",
]
