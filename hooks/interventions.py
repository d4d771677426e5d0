"""Intervention hooks: zero or mean-ablate chosen dims or positions. The one implementation of
each: the experiments' conditions (:mod:`.conditions`) are built from these.

Every factory returns ``(hook_name, fn)`` pairs. Positions are ABSOLUTE token indices: pass the
model and "position 0" is each row's first prompt token (its BOS) only, under left padding
(:func:`drope_lens.measurement.generation.padded_forward`), during KV-cache generation
(:func:`drope_lens.measurement.generation.greedy_generate`, or TransformerLens's ``generate``, through
``model.position_offset``) and inside a condition's row group
(:func:`~.conditions.batched_conditions`), never a padding slot or a generated token. Without a
model, positions are indices into each forward's own input.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping, Optional, Sequence

import torch
from jaxtyping import Bool

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

        fn.graph_safe = True  # tensor ops on a fixed mask: may run inside a CUDA-graph decode step
        pairs.append((qkv_hook(layer, tensor, rotary), fn))
    return pairs


def _positions(model, n_pos: int, device) -> torch.Tensor:
    """``[batch|1, pos]`` absolute positions of the current forward (-1 on left padding)."""
    if model is None:
        return torch.arange(n_pos, device=device)[None]
    from drope_lens.measurement.generation import absolute_positions

    return absolute_positions(model, n_pos, device)


def _new_tokens_only(model, n_pos: int) -> bool:
    """True inside a generation's decode forward for a tensor of its new tokens only (none of
    them a prompt token; see ``GenerationState.new_tokens_only``)."""
    if model is None:
        return False
    from drope_lens.measurement.generation import generation_state

    state = generation_state(model)
    return state is not None and state.new_tokens_only(n_pos)


class _OnDevice:
    """A fixed index tensor, made once per device (no host-to-device copy per hook call)."""

    def __init__(self, values: Sequence[int]):
        self.values = [int(v) for v in values]
        self._by_device: dict[str, torch.Tensor] = {}

    def on(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = torch.tensor(self.values, dtype=torch.long, device=device)
        return self._by_device[key]


def prompt_slots(model, n_pos: int, name: str, device) -> Optional[torch.Tensor]:
    """``[batch|1, pos]`` bool: which entries of a forward's ``n_pos`` positions are prompt tokens
    (padding excluded); None when none are (a decode forward of a KV cache)."""
    if model is None:
        return torch.ones(1, n_pos, dtype=torch.bool, device=device)
    from drope_lens.measurement.generation import generation_state

    state = generation_state(model)
    if state is not None:
        return state.prompt_slots(n_pos, device)
    if getattr(model, "position_offset", 0) == 0:
        return torch.ones(1, n_pos, dtype=torch.bool, device=device)  # a plain forward: all prompt
    if name.endswith("hook_rot_k"):
        raise RuntimeError(f"{name}: post-rotary prompt conditions under a KV cache need drope_lens.measurement.generation."
                           "greedy_generate (it records which cached keys are prompt tokens).")
    return None  # a decode forward of a cache: new tokens only


def replace_topk_with_mean(
    n_layers: int,
    k: int = 1,
    tensors: Sequence[str] = ("q", "k"),
    rotary: Rotary = "pre",
    positions: Optional[slice] = None,
    model=None,
) -> list[HookPair]:
    """Per layer, head and batch row: the top-``k`` dims of q/k (largest sequence-axis norm
    ``||x[:, h, i]||_2 / sqrt(T)`` over the row's prompt positions, padding excluded) replaced by
    their mean over those positions, at those positions only.

    ``positions``: a slice of absolute positions to restrict the prompt positions to (default all).
    ``model`` (needed under left padding and KV-cache generation): pre-rotary hooks see the prompt
    only in the prefill forward (later forwards hold new tokens, left alone; the modified keys are
    already cached); ``hook_rot_k`` sees every cached key in each forward, so under
    :func:`~drope_lens.measurement.generation.greedy_generate` the same replacement is recomputed on the
    prompt's keys at every step (same values, same result). Without ``model`` every position of
    each forward is a prompt position.
    """
    if k < 1:
        raise ValueError(f"k={k}: must be at least 1.")
    if positions is not None and (positions.step not in (None, 1)):
        raise ValueError(f"positions={positions}: only a contiguous slice (step 1) of absolute positions.")

    def fn(x, hook):
        prompt = prompt_slots(model, x.shape[1], hook.name, x.device)  # [batch|1, pos] bool
        if prompt is None:
            return x
        if positions is not None:
            pos = _positions(model, x.shape[1], x.device)
            if positions.start is not None:
                prompt = prompt & (pos >= positions.start)
            if positions.stop is not None:
                prompt = prompt & (pos < positions.stop)
        valid = prompt.to(torch.float32)[:, :, None, None]
        count = valid.sum(dim=1).clamp(min=1.0)  # [batch|1, 1, 1]
        xf = x.float() * valid
        norms = (xf.square().sum(dim=1) / count).sqrt()  # [batch, head, d_head]
        top = norms.topk(min(k, x.shape[-1]), dim=-1).indices
        chosen = torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, top, True)[:, None]
        mean = (xf.sum(dim=1, keepdim=True) / count[:, None]).to(x.dtype)
        return torch.where(chosen & prompt[:, :, None, None], mean, x)

    # Graph-safe: in a decode step whose new tokens hold no prompt token (known on the host) it
    # returns x untouched; whole-cache points (hook_rot_k) are kept off graphs by name.
    fn.graph_safe = True
    return [(qkv_hook(layer, tensor, rotary), fn) for tensor in tensors for layer in range(n_layers)]


def ablate_positions(
    names: Sequence[str],
    positions: Sequence[int],
    mode: AblationMode = "zero",
    model=None,
    mean_values: Optional[Mapping[str, torch.Tensor]] = None,
) -> list[HookPair]:
    """Zero or mean-ablate absolute ``positions`` of any ``[batch, pos, ...]`` hooks
    (``hook_mlp_out``, ``hook_v``, ``hook_resid_post``, ...).

    ``mode="mean"`` replaces a position by ``mean_values[name]`` when given (e.g. a dataset mean,
    shaped like one position of the hook), else by the mean over the row's own (non-padding)
    positions of the current forward. Pass ``model`` for absolute positions (see module doc).
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode={mode!r}: allowed values are 'zero', 'mean'.")
    wanted = _OnDevice(sorted(set(int(p) for p in positions)))
    if any(p < 0 for p in wanted.values):
        raise ValueError(f"positions {wanted.values}: absolute positions must be >= 0.")

    only_first = wanted.values == [0]

    def fn(x, hook):
        if only_first and _new_tokens_only(model, x.shape[1]):
            return x  # a decode forward's new tokens: never at position 0 (known on the host)
        pos = _positions(model, x.shape[1], x.device)  # [batch|1, pos]
        hit = torch.isin(pos, wanted.on(x.device))
        hit = hit.view(*hit.shape, *([1] * (x.ndim - 2)))
        if mode == "zero":
            return x.masked_fill(hit, 0.0)
        if mean_values is not None and hook.name in mean_values:
            replacement = mean_values[hook.name].to(x.device, x.dtype)
        else:
            valid = (pos >= 0).to(torch.float32).view(*pos.shape, *([1] * (x.ndim - 2)))
            replacement = ((x.float() * valid).sum(dim=1, keepdim=True)
                           / valid.sum(dim=1, keepdim=True).clamp(min=1.0)).to(x.dtype)
        return torch.where(hit, replacement, x)

    # Graph-safe (a CUDA-graph decode step may hold it) when its positions come from the forward's
    # own indices (no model) or when it targets position 0 only (a no-op in every decode step).
    fn.graph_safe = model is None or only_first
    return [(name, fn) for name in names]
