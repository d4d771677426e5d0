"""Intervention hooks: zero or mean-ablate chosen dims or positions.

Every factory returns ``(hook_name, fn)`` pairs. Positions are ABSOLUTE token indices: pass the
model (a drope_lens model records the KV-cache offset of each forward in
``model.position_offset``) and "position 0" touches the BOS token only, also during generation,
where each later forward sees just the new tokens. Without a model, positions are indices into
each forward's own input.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping, Optional, Sequence

import torch
from jaxtyping import Bool

from .capture import sequence_axis_norm
from .names import Rotary, qkv_hook

HookPair = tuple[str, Callable]
AblationMode = Literal["zero", "mean"]


def zero_dims(
    masks: Mapping[int, Bool[torch.Tensor, "head d_head"]],
    tensor: Literal["q", "k", "v"],
    rotary: Rotary = "pre",
) -> list[HookPair]:
    """Zero the (head, dim) entries where ``masks[layer]`` is True, at every position.

    One pair per layer in ``masks``; entries outside the mask are left bit-for-bit unchanged.
    """
    pairs: list[HookPair] = []
    for layer, mask in masks.items():
        mask = mask.bool()

        def fn(x, hook, mask=mask):
            if mask.shape != x.shape[2:]:
                raise ValueError(f"{hook.name}: mask shape {tuple(mask.shape)} != [head, d_head] {tuple(x.shape[2:])}")
            return x.masked_fill(mask.to(x.device), 0.0)

        pairs.append((qkv_hook(layer, tensor, rotary), fn))
    return pairs


def replace_topk_with_mean(
    n_layers: int,
    k: int = 1,
    tensors: Sequence[str] = ("q", "k"),
    rotary: Rotary = "pre",
    positions: Optional[slice] = None,
) -> list[HookPair]:
    """Per layer and head, replace the top-``k`` dims (largest sequence-axis norm) by their mean
    over positions.

    Both the top-k choice and the mean are computed per batch row over ``positions`` (default:
    every position of the forward, i.e. the prompt when called on it), and only those positions
    are replaced.
    """
    if k < 1:
        raise ValueError(f"k={k}: must be at least 1.")
    window = positions if positions is not None else slice(None)

    def fn(x, hook):
        part = x[:, window]
        norms = sequence_axis_norm(part)  # [batch, head, d_head]
        top = norms.topk(min(k, x.shape[-1]), dim=-1).indices  # [batch, head, k]
        chosen = torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, top, True)[:, None]  # [b,1,h,d]
        mean = part.float().mean(dim=1, keepdim=True).to(x.dtype)  # [batch, 1, head, d_head]
        out = x.clone()
        out[:, window] = torch.where(chosen, mean, part)
        return out

    return [(qkv_hook(layer, tensor, rotary), fn) for tensor in tensors for layer in range(n_layers)]


def ablate_positions(
    names: Sequence[str],
    positions: Sequence[int],
    mode: AblationMode = "zero",
    model=None,
    mean_values: Optional[Mapping[str, torch.Tensor]] = None,
) -> list[HookPair]:
    """Zero or mean-ablate absolute ``positions`` of any hooks (``hook_mlp_out``, ``hook_v``, ...).

    ``mode="mean"`` replaces a position by ``mean_values[name]`` when given (e.g. a dataset mean),
    else by the mean over the current forward's positions.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode={mode!r}: allowed values are 'zero', 'mean'.")
    wanted = sorted(set(int(p) for p in positions))
    if any(p < 0 for p in wanted):
        raise ValueError(f"positions {wanted}: absolute positions must be >= 0.")

    def fn(x, hook):
        offset = getattr(model, "position_offset", 0) if model is not None else 0
        local = [p - offset for p in wanted if 0 <= p - offset < x.shape[1]]
        if not local:
            return x
        out = x.clone()
        if mode == "zero":
            out[:, local] = 0.0
        elif mean_values is not None and hook.name in mean_values:
            out[:, local] = mean_values[hook.name].to(x.device, x.dtype)
        else:
            out[:, local] = x.float().mean(dim=1, keepdim=True).to(x.dtype)
        return out

    return [(name, fn) for name in names]
