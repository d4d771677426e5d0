"""``to_drope``: a RoPE model turned into its DroPE counterpart (same weights, rotary removed)."""

from __future__ import annotations

import copy

from .checkpoint import CheckpointSpec
from .transformer import DropeLensTransformer, attention_settings


def to_drope(model: DropeLensTransformer) -> DropeLensTransformer:
    """The same network with rotary position embeddings removed (``attention_type="nope"``).

    This is the starting point of DroPE recalibration: the weights are unchanged, attention stops
    rotating q and k, and the softmax scale stays the model's. The weights are copied, so training
    the result (recalibration) leaves ``model`` untouched.
    """
    if not isinstance(model, DropeLensTransformer):
        raise TypeError(f"to_drope() needs a model from drope_lens.load_model, got {type(model).__name__}.")
    if model.quantization is not None:
        raise ValueError(
            f"to_drope() of a {model.quantization}-quantised model is not supported; load it with "
            "quantization=None (bf16 or fp32) to convert."
        )
    if model.lens.variant == "drope":
        raise ValueError(f"{model.lens.source} is already a DroPE model (attention_type={model.lens.attention_type!r}).")
    if model.lens.has_qk_norm_weights:
        raise ValueError("to_drope() expects a plain RoPE model without q/k norm weights.")
    spec: CheckpointSpec = model.lens.with_variant("drope")
    result = copy.deepcopy(model)
    result.lens = spec
    for index, block in enumerate(result.blocks):
        block.attn.settings = attention_settings(spec, index)
    return result
