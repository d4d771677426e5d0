"""What the ablation conditions need from a model before they run: its BOS spike layer (Exp 4's
BOS-norm ratio) and its massive Q/K entries (Exp 2's identification), computed on reference texts
disjoint from the task prompts and evaluation texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from drope_lens.hooks.conditions import NEEDS_MASSIVE, NEEDS_SPIKE, Condition, build_condition, check_conditions
from drope_lens.texts import TextsLike, as_texts

from .common import BosPolicy, batches_by_length, tokenize

SPIKE_THRESHOLD = 2.0


@torch.inference_mode()
def bos_norm_ratios(model, texts: TextsLike, *, max_tokens: int = 512, bos: BosPolicy = "checkpoint",
                    batch_size: int = 8) -> np.ndarray:
    """Per layer: ||resid_post[0]|| / mean_{t>=1} ||resid_post[t]||, averaged over ``texts``
    (float64 array of length n_layers)."""
    tokens = tokenize(model, as_texts(texts, name_prefix="reference"), max_tokens, bos=bos)
    n_layers = model.cfg.n_layers
    totals = torch.zeros(n_layers, dtype=torch.float64)
    store: dict[int, torch.Tensor] = {}

    def make(layer):
        def fn(x, hook):
            norms = x.float().norm(dim=-1)  # [batch, pos]
            store[layer] = (norms[:, 0] / norms[:, 1:].mean(dim=1)).sum().double().cpu()
        return fn

    hooks = [(f"blocks.{layer}.hook_resid_post", make(layer)) for layer in range(n_layers)]
    for _, batch in batches_by_length(tokens, batch_size):
        model.run_with_hooks(batch.to(model.cfg.device), fwd_hooks=hooks, return_type=None)
        totals += torch.stack([store[layer] for layer in range(n_layers)])
    return (totals / len(tokens)).numpy()


def spike_layer(ratios: Sequence[float], threshold: float = SPIKE_THRESHOLD) -> tuple[int, str]:
    """The first layer whose BOS-norm ratio exceeds ``threshold`` and the rule that chose it
    (``"first > 2"``); if none does, the argmax layer (rule ``"argmax (none > 2)"``)."""
    ratios = np.asarray(ratios, dtype=float)
    above = np.flatnonzero(ratios > threshold)
    if above.size:
        return int(above[0]), f"first > {threshold:g}"
    return int(np.argmax(ratios)), f"argmax (none > {threshold:g})"


@dataclass
class ConditionSet:
    """The conditions of one model, built, plus what they were built from."""

    conditions: dict[str, Condition]
    spike_layer: Optional[int] = None
    spike_rule: Optional[str] = None
    bos_ratios: list[float] = field(default_factory=list)
    massive_masks: Optional[dict] = None

    def info(self, name: str) -> dict:
        return self.conditions[name].info


def prepare_conditions(
    model,
    names: Sequence[str],
    reference_texts: TextsLike,
    *,
    rotary: str = "pre",
    max_tokens: int = 256,
    bos: BosPolicy = "checkpoint",
    threshold: float = 5.0,
    batch_size: int = 8,
) -> ConditionSet:
    """Build ``names`` for ``model``: the spike layer and massive masks are computed from
    ``reference_texts`` only if a condition needs them."""
    from .disruption import identify_massive

    names = check_conditions(names)
    out = ConditionSet({})
    if any(n in NEEDS_SPIKE for n in names):
        ratios = bos_norm_ratios(model, reference_texts, max_tokens=max_tokens, bos=bos, batch_size=batch_size)
        out.spike_layer, out.spike_rule = spike_layer(ratios)
        out.bos_ratios = [float(r) for r in ratios]
    if any(n in NEEDS_MASSIVE for n in names):
        out.massive_masks = identify_massive(model, reference_texts, threshold=threshold, max_tokens=max_tokens,
                                             rotary=rotary, batch_size=batch_size, bos=bos)
    for name in names:
        condition = build_condition(model, name, rotary=rotary, spike_layer=out.spike_layer,
                                    massive_masks=out.massive_masks)
        if name in NEEDS_SPIKE:
            condition.info["spike_rule"] = out.spike_rule
        out.conditions[name] = condition
    return out
