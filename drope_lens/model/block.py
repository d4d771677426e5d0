"""Transformer block for HookedTransformer that normalises the attention input once.

TransformerLens 3.9's ``TransformerBlock.forward`` applies ``ln1`` three times to the same
residual stream (once each for the query, key and value inputs) and adds ``0.0`` to two of the
results: on a Llama-2-7B-shaped model in bf16 that is 2 of every 4 RMSNorms and two extra
passes over the residual stream per layer. :class:`LensTransformerBlock` computes ``ln1`` once
and passes the same tensor to all three, which gives the same attention output (the norm is a
deterministic function of the same input; adding zero changes no value). It does this only for
the pre-norm Llama layout and only while nothing is hooked on ``ln1``; otherwise it runs
TransformerLens's own forward, so a hook on ``ln1.hook_normalized``/``ln1.hook_scale`` fires three
times per forward, exactly as in stock TransformerLens.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from transformer_lens.components import TransformerBlock

from .hooks_state import is_hooked, through

try:  # TransformerLens 3.9 keeps its post-norm list beside the block
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
except ImportError:  # pragma: no cover - older layouts
    POST_NORM_ARCHITECTURES = ()


class LensTransformerBlock(TransformerBlock):
    """``TransformerBlock`` with one ``ln1`` per forward in the plain pre-norm case."""

    def _plain_layout(self, shortformer_pos_embed: Optional[torch.Tensor]) -> bool:
        cfg = self.cfg
        return not (
            shortformer_pos_embed is not None
            or cfg.use_attn_in
            or cfg.use_split_qkv_input
            or cfg.use_hook_mlp_in
            or cfg.attn_only
            or cfg.parallel_attn_mlp
            or cfg.use_normalization_before_and_after
            or cfg.original_architecture in POST_NORM_ARCHITECTURES
            or is_hooked(self.ln1.hook_scale)
            or is_hooked(self.ln1.hook_normalized)
        )

    def forward(  # type: ignore[override]
        self,
        resid_pre: Float[torch.Tensor, "batch pos d_model"],
        shortformer_pos_embed: Optional[Float[torch.Tensor, "batch pos d_model"]] = None,
        past_kv_cache_entry=None,
        attention_mask: Optional[Int[torch.Tensor, "batch offset_pos"]] = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        if not self._plain_layout(shortformer_pos_embed):
            return super().forward(resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask)
        resid_pre = through(self.hook_resid_pre, resid_pre)
        normalized = self.ln1(resid_pre)
        attn_out = through(
            self.hook_attn_out,
            self.attn(
                query_input=normalized,
                key_input=normalized,
                value_input=normalized,
                past_kv_cache_entry=past_kv_cache_entry,
                attention_mask=attention_mask,
            ),
        )
        if resid_pre.device != attn_out.device:
            resid_pre = resid_pre.to(attn_out.device)
        resid_mid = through(self.hook_resid_mid, resid_pre + attn_out)
        mlp_out = through(self.hook_mlp_out, self.mlp(self.ln2(resid_mid)))
        return through(self.hook_resid_post, resid_mid + mlp_out)
