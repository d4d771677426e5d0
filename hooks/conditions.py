"""The ablation conditions of Exp 3-6 as hook sets, by name.

Each condition is a list of ``(hook_name, fn)`` pairs (:class:`Condition` ``.hooks``), usable with
``run_with_hooks``, ``model.hooks`` and :func:`drope_lens.measurement.generation.greedy_generate`, and
combinable per group of batch rows with :func:`batched_conditions`.

Names (:data:`CONDITIONS`):

- ``baseline``: no hooks.
- ``topk_mean_q_k``: per layer and head, the top-1 dim of Q and of K (largest sequence-axis norm
  over the prompt) replaced by its mean over the prompt positions, on prompt positions only;
  ``rotary="pre"`` (``hook_q``/``hook_k``, the study) or ``"post"`` (``hook_rot_q``/``hook_rot_k``).
- ``massive_zero``: Exp 2's massive Q/K entries zeroed at every position (masks passed in).
- ``bos_mlp``: ``hook_mlp_out`` zeroed at absolute position 0 in the spike layer (passed in;
  chosen by :func:`drope_lens.measurement.analysis.spike_layer` under a named rule, by
  :func:`drope_lens.measurement.analysis.prepare_conditions`).
- ``bos_v_spike`` / ``bos_v_all``: ``hook_v`` zeroed at position 0 in the spike layer / in all layers.
- ``l1_mlp`` / ``l1_attn`` / ``l1_both``: ``blocks.1.hook_mlp_out`` / ``hook_attn_out`` / both
  zeroed at every position (generated tokens included); ``l1_both_bos``: both at position 0 only.

Positions are absolute (:func:`drope_lens.measurement.generation.absolute_positions`): "position 0" is each
prompt's first token, also under left padding and during KV-cache generation, never a new token.
The hooks are the public ones of :mod:`drope_lens.hooks` (``ablate_positions``,
``replace_topk_with_mean`` with ``model=``, ``zero_dims``): one implementation of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch

from drope_lens.measurement.generation import rows_of_group

from .interventions import _OnDevice, ablate_positions, replace_topk_with_mean, zero_dims
from .names import Rotary

HookPair = tuple[str, Callable]
CONDITIONS: tuple[str, ...] = ("baseline", "topk_mean_q_k", "massive_zero", "bos_mlp", "bos_v_spike", "bos_v_all",
                               "l1_mlp", "l1_attn", "l1_both", "l1_both_bos")
#: Conditions that need the spike layer / the massive masks.
NEEDS_SPIKE = ("bos_mlp", "bos_v_spike")
NEEDS_MASSIVE = ("massive_zero",)


@dataclass
class Condition:
    """A named hook set and what it was built from (``info``: layer used, rotary, counts...)."""

    name: str
    hooks: list[HookPair]
    info: dict = field(default_factory=dict)


def check_conditions(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` validated against :data:`CONDITIONS` (an error names the bad one)."""
    if isinstance(names, str):
        names = (names,)
    for name in names:
        if name not in CONDITIONS:
            raise ValueError(f"condition {name!r} is unknown; allowed values are {list(CONDITIONS)}.")
    if not names:
        raise ValueError(f"no conditions given; allowed values are {list(CONDITIONS)}.")
    return tuple(names)


# ------------------------------------------------------------------------------------------
# Hook factories: the public ones (drope_lens.hooks), position- and padding-aware
# ------------------------------------------------------------------------------------------
def zero_everywhere(names: Sequence[str]) -> list[HookPair]:
    """Zero hooks ``names`` at every position."""

    def zero(x, hook):
        return torch.zeros_like(x)

    zero.graph_safe = True  # a pure tensor op: may run inside a CUDA-graph decode step
    return [(name, zero) for name in names]


def _bos(model, names: Sequence[str]) -> list[HookPair]:
    """Zero ``names`` at absolute position 0 (each prompt's first token)."""
    return ablate_positions(names, [0], "zero", model=model)


# ------------------------------------------------------------------------------------------
# Conditions by name
# ------------------------------------------------------------------------------------------
def build_condition(
    model,
    name: str,
    *,
    rotary: Rotary = "pre",
    spike_layer: Optional[int] = None,
    massive_masks: Optional[Mapping[str, Mapping[int, torch.Tensor]]] = None,
) -> Condition:
    """The hook set called ``name`` (see the module docstring) for ``model``."""
    check_conditions([name])
    n_layers = model.cfg.n_layers
    if name in NEEDS_SPIKE and spike_layer is None:
        raise ValueError(f"condition {name!r} needs spike_layer (see drope_lens.measurement.analysis.spike_layer).")
    if name in NEEDS_SPIKE and not 0 <= spike_layer < n_layers:
        raise ValueError(f"spike_layer={spike_layer}: the model has layers 0..{n_layers - 1}.")
    if name.startswith("l1_") and n_layers < 2:
        raise ValueError(f"condition {name!r} needs at least 2 layers; the model has {n_layers}.")
    if name == "baseline":
        return Condition(name, [])
    if name == "topk_mean_q_k":
        return Condition(name, replace_topk_with_mean(n_layers, 1, ("q", "k"), rotary, model=model),
                         {"rotary": rotary, "k": 1})
    if name == "massive_zero":
        if massive_masks is None:
            raise ValueError("condition 'massive_zero' needs massive_masks (see drope_lens.measurement.analysis.identify_massive).")
        device = model.cfg.device
        pairs: list[HookPair] = []
        for tensor in ("q", "k"):
            pairs += zero_dims({layer: m.to(device) for layer, m in massive_masks[tensor].items()}, tensor, rotary)
        counts = {f"n_zeroed_{t}": int(sum(int(m.sum()) for m in massive_masks[t].values())) for t in ("q", "k")}
        return Condition(name, pairs, {"rotary": rotary, **counts})
    if name == "bos_mlp":
        return Condition(name, _bos(model, [f"blocks.{spike_layer}.hook_mlp_out"]), {"layer": spike_layer})
    if name == "bos_v_spike":
        return Condition(name, _bos(model, [f"blocks.{spike_layer}.attn.hook_v"]), {"layer": spike_layer})
    if name == "bos_v_all":
        return Condition(name, _bos(model, [f"blocks.{i}.attn.hook_v" for i in range(n_layers)]))
    targets = {"l1_mlp": ["blocks.1.hook_mlp_out"], "l1_attn": ["blocks.1.hook_attn_out"],
               "l1_both": ["blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"],
               "l1_both_bos": ["blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"]}[name]
    if name == "l1_both_bos":
        return Condition(name, _bos(model, targets), {"layer": 1})
    return Condition(name, zero_everywhere(targets), {"layer": 1})


def batched_conditions(conditions: Sequence[Sequence[HookPair]], rows: Sequence[Sequence[int]]) -> list[HookPair]:
    """Like :func:`~drope_lens.hooks.by_row_groups`, for position-aware hooks: ``conditions[i]``
    acts on batch rows ``rows[i]`` only (as if run alone on that sub-batch) and reads those rows'
    absolute positions. Row indices are kept on the activations' device (no host-to-device copy,
    hence no synchronisation, per hook call)."""
    if len(conditions) != len(rows):
        raise ValueError(f"{len(conditions)} conditions but {len(rows)} row groups.")
    by_name: dict[str, list[tuple[_OnDevice, Callable]]] = {}
    for pairs, group in zip(conditions, rows):
        index = _OnDevice(group)  # the group's row indices, one tensor per device
        for name, fn in pairs:
            if not isinstance(name, str):
                raise ValueError("batched_conditions needs hook names, not filters.")
            by_name.setdefault(name, []).append((index, fn))

    def make(entries):
        def fn(x, hook):
            out = x.clone()
            for index, inner in entries:
                idx = index.on(x.device)
                with rows_of_group(idx):
                    result = inner(x[idx], hook)
                if result is not None:
                    out[idx] = result
            return out

        # fixed device indices and tensor ops only: graph-safe when every inner hook is
        fn.graph_safe = all(getattr(inner, "graph_safe", False) for _, inner in entries)
        return fn

    return [(name, make(entries)) for name, entries in by_name.items()]
