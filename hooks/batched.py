"""Batched conditions: N ablation conditions in one forward, one condition per group of rows.

``batched_zero_dims`` is the fast path for dim masks (one multiply per hook; ``batched_zero_qk``
for Q and K masks together); ``by_row_groups`` composes arbitrary per-condition hook lists.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping, Optional, Sequence

import torch
from jaxtyping import Bool

from .names import Rotary, qkv_hook

HookPair = tuple[str, Callable]


def batched_zero_dims(
    masks_per_row: Sequence[Mapping[int, Bool[torch.Tensor, "head d_head"]]],
    tensor: str,
    rotary: Rotary = "pre",
) -> list[HookPair]:
    """Row ``r`` of the batch gets ``zero_dims(masks_per_row[r], ...)``; a row with no mask for a
    layer is untouched. Equivalent to running each row alone with its own ``zero_dims``."""
    layers = sorted({layer for masks in masks_per_row for layer in masks})
    pairs: list[HookPair] = []
    for layer in layers:
        shapes = {tuple(m[layer].shape) for m in masks_per_row if layer in m}
        if len(shapes) != 1:
            raise ValueError(f"layer {layer}: masks of different shapes {shapes}.")
        (shape,) = shapes
        device = next(m[layer].device for m in masks_per_row if layer in m)
        stacked = torch.stack(
            [m[layer].bool() if layer in m else torch.zeros(shape, dtype=torch.bool, device=device)
             for m in masks_per_row]
        )  # [batch, head, d_head], on the masks' device: put them on the model's to avoid a copy per forward

        def fn(x, hook, stacked=stacked):
            if stacked.shape[0] != x.shape[0]:
                raise ValueError(f"{hook.name}: {stacked.shape[0]} row masks for a batch of {x.shape[0]}.")
            return x.masked_fill(stacked.to(x.device)[:, None], 0.0)

        pairs.append((qkv_hook(layer, tensor, rotary), fn))
    return pairs


def batched_zero_qk(
    row_masks: Sequence[Optional[Mapping[str, Mapping[int, Bool[torch.Tensor, "head d_head"]]]]],
    rotary: Rotary = "pre",
) -> list[HookPair]:
    """:func:`batched_zero_dims` for ``hook_q`` and ``hook_k`` at once: row ``r`` gets the masks
    ``row_masks[r]`` (``{"q": {layer: mask}, "k": {layer: mask}}``; None: the row is untouched)."""
    pairs = []
    for tensor in ("q", "k"):
        per_row = [m[tensor] if m is not None else {} for m in row_masks]
        if any(per_row):
            pairs += batched_zero_dims(per_row, tensor, rotary)
    return pairs


def by_row_groups(conditions: Sequence[Sequence[HookPair]], rows: Sequence[Sequence[int]]) -> list[HookPair]:
    """Apply ``conditions[i]`` (a list of hook pairs with string names) to batch rows ``rows[i]``.

    Each condition's hook functions see only their rows, as if run alone with that sub-batch.
    """
    if len(conditions) != len(rows):
        raise ValueError(f"{len(conditions)} conditions but {len(rows)} row groups.")
    by_name: dict[str, list[tuple[list[int], Callable]]] = defaultdict(list)
    for pairs, group in zip(conditions, rows):
        for name, fn in pairs:
            if not isinstance(name, str):
                raise ValueError("by_row_groups needs hook names, not filters.")
            by_name[name].append((list(group), fn))

    def make(entries):
        def fn(x, hook):
            out = x.clone()
            for group, inner in entries:
                index = torch.tensor(group, device=x.device)
                result = inner(x[index], hook)
                out[index] = x[index] if result is None else result
            return out

        return fn

    return [(name, make(entries)) for name, entries in by_name.items()]
