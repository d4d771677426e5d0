"""Capture hooks that reduce activations as they stream by, instead of caching them whole.

Each factory returns a list of ``(hook_name, fn)`` pairs for ``model.run_with_hooks``,
``with model.hooks(...)`` or ``transformer_lens.patching``; results land in the ``store`` dict the
caller passes (keys documented per factory). Values are float32 tensors on the model's device,
one row per batch element; the caller moves them where it likes.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
from jaxtyping import Float, Int

from .names import Rotary, qkv_hook
from .norms import first_position_norms, position_norms

HookPair = tuple[str, Callable]


def sequence_axis_norm(
    x: Float[torch.Tensor, "batch pos head d_head"],
    lengths: Optional[Int[torch.Tensor, "batch"]] = None,
) -> Float[torch.Tensor, "batch head d_head"]:
    """M[b, h, i] = ||x[b, :, h, i]||_2 / sqrt(T) over the sequence axis (float32).

    ``lengths`` (valid tokens per row, the rest right-padding) restricts the norm to each row's
    own tokens and divides by its own sqrt(T).
    """
    if lengths is None:
        # float32 accumulation without materialising a float32 copy of x
        return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32) / math.sqrt(x.shape[1])
    x = x.float()
    positions = torch.arange(x.shape[1], device=x.device)
    valid = (positions[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)  # [batch, pos]
    squares = (x.square() * valid[:, :, None, None]).sum(dim=1)
    return squares.sqrt() / lengths.to(x.device, x.dtype).sqrt()[:, None, None]


def capture_dim_norms(
    store: dict,
    n_layers: int,
    tensors: Iterable[str] = ("q", "k", "v"),
    rotary: Rotary = "pre",
    lengths: Optional[torch.Tensor] = None,
) -> list[HookPair]:
    """Per-(head, dim) sequence-axis norms M of q/k/v in every layer.

    ``store[(layer, tensor)]`` = ``[batch, head, d_head]`` (kv heads for k/v under grouped-query
    attention), as defined by :func:`sequence_axis_norm`.
    """
    pairs: list[HookPair] = []
    for tensor in tensors:
        for layer in range(n_layers):

            def fn(x, hook, key=(layer, tensor)):
                store[key] = sequence_axis_norm(x, lengths)
                return None

            pairs.append((qkv_hook(layer, tensor, rotary), fn))
    return pairs


def capture_token_mean_norm(store: dict, names: Sequence[str]) -> list[HookPair]:
    """Token-mean L2 norm of any hook: ``store[name]`` = ``[batch]``.

    The norm is over all non-batch, non-position axes (so all heads concatenated for q/k/v), by
    :func:`~drope_lens.hooks.norms.position_norms` (shared with other hooks on the same tensor).
    """

    def fn(x, hook):
        store[hook.name] = position_norms(x).mean(dim=1)
        return None

    return [(name, fn) for name in names]


def capture_positions(store: dict, names: Sequence[str], positions: Sequence[int], model=None) -> list[HookPair]:
    """Values of hooks at absolute ``positions``: ``store[(name, position)]`` = ``[batch, ...]`` float32.

    With ``model``, positions are absolute per row: under left padding each row's own position
    (not the padded slot), during KV-cache generation the forward that contains it (rows whose
    position has not come yet hold NaN until it does). Rows are the forward's batch rows
    (:func:`~drope_lens.measurement.generation.greedy_generate` batches prompts longest first; its
    ``batch_hooks(indices)`` says which prompts a batch holds). Without ``model``, positions are
    indices into each forward's own input.
    """
    wanted = [int(p) for p in positions]
    if any(p < 0 for p in wanted):
        raise ValueError(f"positions {wanted}: absolute positions must be >= 0.")

    def fn(x, hook):
        if model is None:
            pos = torch.arange(x.shape[1], device=x.device)[None]
        else:
            from drope_lens.measurement.generation import absolute_positions

            pos = absolute_positions(model, x.shape[1], x.device)
        pos = pos.expand(x.shape[0], -1)
        rows = torch.arange(x.shape[0], device=x.device)
        for position in wanted:
            hit = pos == position  # [batch, pos]
            present = hit.any(dim=1)
            if not bool(present.any()):
                continue
            value = x[rows, hit.to(torch.int8).argmax(dim=1)].detach().float()
            key = (hook.name, position)
            fresh = key not in store or store[key].shape != value.shape or store[key].device != value.device
            if fresh or bool((pos == 0).any()):  # a new sequence (its first token is here): no stale rows
                store[key] = torch.full_like(value, float("nan"))
            store[key][present] = value[present]
        return None

    return [(name, fn) for name in names]


def capture_bos_norms(store: dict, n_layers: int) -> list[HookPair]:
    """BOS residual norms of every layer, for the spike-layer rules of :mod:`drope_lens.measurement.analysis`.

    ``store[layer]`` = dict of ``[batch]`` float32 tensors: ``bos_norm`` = ||resid_post[0]||_2,
    ``bos_norm_pre`` = ||resid_pre[0]||_2 (what enters the block), ``bos_ratio`` = bos_norm /
    mean over t >= 1 of ||resid_post[t]|| (dimensionless). Position 0 is each row's first token:
    use unpadded (equal-length) batches, as the measurement experiments do. Norms come from
    :mod:`drope_lens.hooks.norms`: computed once per tensor in a forward that several measurements share.
    """

    def post(x, hook):
        norms = position_norms(x)  # [batch, pos]
        entry = store.setdefault(hook.layer(), {})
        entry["bos_norm"] = norms[:, 0]
        entry["bos_ratio"] = norms[:, 0] / norms[:, 1:].mean(dim=1)
        return None

    def pre(x, hook):
        store.setdefault(hook.layer(), {})["bos_norm_pre"] = first_position_norms(x)
        return None

    pairs: list[HookPair] = []
    for layer in range(n_layers):
        pairs += [(f"blocks.{layer}.hook_resid_pre", pre), (f"blocks.{layer}.hook_resid_post", post)]
    return pairs
