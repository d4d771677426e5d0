"""Streaming per-head attention statistics as hook pairs (no ``hook_pattern``, no ``[T, T]``).

:func:`capture_attention_stats` keeps each layer's post-rotary queries from ``hook_rot_q`` and,
when ``hook_rot_k`` fires (right after it in the same attention forward), computes the statistics
of :mod:`drope_lens.measurement.attention_stats` from q, k and the layer's ``scale``: the chunked PyTorch path,
or the Triton kernel of :mod:`drope_lens.measurement.attention_stats_triton` on CUDA. Nothing is returned to
the forward (the hooks return None), so the model's output is untouched and attention itself may
run through SDPA.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import torch

from drope_lens.measurement.attention_stats import DEFAULT_MAX_DISTANCE, DEFAULT_WINDOW, AttentionStats, attention_stats, check_parameters

HookPair = tuple[str, Callable]
StatsBackend = Literal["auto", "torch", "triton"]


def layer_scale(model, layer: int) -> float:
    """The multiplier on q.k of ``layer`` (``1/sqrt(d_head)`` or the checkpoint's softmax_scale)."""
    attn = model.blocks[layer].attn
    settings = getattr(attn, "settings", None)
    if settings is not None:
        return float(settings.scale)
    return 1.0 / float(attn.attn_scale)  # stock TransformerLens attention


def compute_stats(q, k, scale, *, backend: StatsBackend = "auto", **kwargs) -> AttentionStats:
    """:func:`drope_lens.measurement.attention_stats.attention_stats` or its Triton twin, as ``backend`` says
    (``"auto"``: Triton on CUDA when it is importable)."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend={backend!r}: allowed values are 'auto', 'torch', 'triton'.")
    if backend != "torch":
        from drope_lens.measurement import attention_stats_triton

        if backend == "triton" or attention_stats_triton.usable(q, k):
            kwargs.pop("block_bytes", None)
            return attention_stats_triton.attention_stats(q, k, scale, **kwargs)
    return attention_stats(q, k, scale, **kwargs)


def capture_attention_stats(
    store: dict,
    model,
    *,
    layers: Optional[Sequence[int]] = None,
    window: int = DEFAULT_WINDOW,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    received: bool = False,
    attention_mask: Optional[torch.Tensor] = None,
    backend: StatsBackend = "auto",
) -> list[HookPair]:
    """Hook pairs that put ``store[layer]`` = :class:`~drope_lens.measurement.attention_stats.AttentionStats`
    (float32, on the model's device, one row per batch element) for every layer in ``layers``
    (default: all).

    ``attention_mask`` ``[batch, pos]`` (1 = real token) is the mask given to the model's forward
    for padded batches (left or right padding); position 0 of each row is its first real token.
    Grouped-query models are handled (query head h reads kv head ``h // (heads / kv_heads)``), and
    a layer whose ``attn.settings`` has a ``sliding_window`` is measured with that window. During
    KV-cache generation each forward measures its own query positions against all cached keys.
    """
    check_parameters(window, max_distance)
    n_layers = model.cfg.n_layers
    chosen = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad}: the model has layers 0..{n_layers - 1}.")
    queries: dict[int, torch.Tensor] = {}
    pairs: list[HookPair] = []
    for layer in chosen:
        settings = getattr(model.blocks[layer].attn, "settings", None)
        sliding = getattr(settings, "sliding_window", None)
        scale = layer_scale(model, layer)

        def keep_q(q, hook, layer=layer):
            queries[layer] = q
            return None

        def measure(k, hook, layer=layer, scale=scale, sliding=sliding):
            q = queries.pop(layer, None)
            if q is None:
                raise RuntimeError(f"{hook.name} fired before blocks.{layer}.attn.hook_rot_q; cannot pair q with k.")
            mask = attention_mask
            if mask is not None and mask.shape[-1] != k.shape[1]:
                raise ValueError(
                    f"attention_mask covers {mask.shape[-1]} positions but layer {layer} has {k.shape[1]} keys.")
            store[layer] = compute_stats(q, k, scale, backend=backend, attention_mask=mask, window=window,
                                         max_distance=max_distance, received=received, sliding_window=sliding)
            return None

        pairs.append((f"blocks.{layer}.attn.hook_rot_q", keep_q))
        pairs.append((f"blocks.{layer}.attn.hook_rot_k", measure))
    return pairs
