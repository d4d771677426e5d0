"""What the ablation conditions need from a model before they run: its BOS spike layer (Exp 4's
BOS-norm profile under a named rule, :mod:`drope_lens.analysis`) and its massive Q/K entries
(Exp 2's identification), computed on the first 512 tokens (as Exp 4-6 measure) of reference texts
disjoint from the task prompts and evaluation texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from drope_lens import analysis
from drope_lens.hooks.capture import capture_bos_norms
from drope_lens.hooks.conditions import NEEDS_MASSIVE, NEEDS_SPIKE, Condition, build_condition, check_conditions
from drope_lens.texts import TextsLike, as_texts

from .common import BosPolicy, batches_by_length, tokenize

SPIKE_THRESHOLD = analysis.SPIKE_THRESHOLD


@torch.inference_mode()
def bos_norm_profile(model, texts: TextsLike, *, max_tokens: int = 512, bos: BosPolicy = "checkpoint",
                     batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The model's mean BOS profile over ``texts``: ``(ratios, norms)`` (float64).

    ``ratios[l]`` = mean over texts of ||resid_post_l[0]|| / mean_{t>=1} ||resid_post_l[t]||
    (dimensionless, n_layers entries); ``norms`` = mean over texts of ``[||resid_pre_0[0]||,
    ||resid_post_0[0]||, ..., ||resid_post_{L-1}[0]||]`` (L2 norms, n_layers + 1 entries), as
    :func:`drope_lens.analysis.spike_layer` takes them.
    """
    tokens = tokenize(model, as_texts(texts, name_prefix="reference"), max_tokens, bos=bos)
    n_layers = model.cfg.n_layers
    ratios = torch.zeros(n_layers, dtype=torch.float64)
    norms = torch.zeros(n_layers + 1, dtype=torch.float64)
    store: dict = {}
    hooks = capture_bos_norms(store, n_layers)
    for _, batch in batches_by_length(tokens, batch_size):
        model.run_with_hooks(batch.to(model.cfg.device), fwd_hooks=hooks, return_type=None)
        ratios += torch.stack([store[layer]["bos_ratio"].double().sum().cpu() for layer in range(n_layers)])
        norms += torch.stack([store[0]["bos_norm_pre"].double().sum().cpu()]
                             + [store[layer]["bos_norm"].double().sum().cpu() for layer in range(n_layers)])
    return (ratios / len(tokens)).numpy(), (norms / len(tokens)).numpy()


def bos_norm_ratios(model, texts: TextsLike, *, max_tokens: int = 512, bos: BosPolicy = "checkpoint",
                    batch_size: int = 8) -> np.ndarray:
    """Per layer: ||resid_post[0]|| / mean_{t>=1} ||resid_post[t]||, averaged over ``texts``
    (float64 array of length n_layers; see :func:`bos_norm_profile`)."""
    return bos_norm_profile(model, texts, max_tokens=max_tokens, bos=bos, batch_size=batch_size)[0]


def spike_layer(ratios: Sequence[float], rule: str = analysis.DEFAULT_SPIKE_RULE, threshold: float = SPIKE_THRESHOLD,
                resid_norms: Optional[Sequence[float]] = None) -> Optional[int]:
    """The spike layer under ``rule``, or None for no spike (:func:`drope_lens.analysis.spike_layer`)."""
    return analysis.spike_layer(ratios, rule, threshold, resid_norms)


@dataclass
class ConditionSet:
    """The conditions of one model, built, plus what they were built from."""

    conditions: dict[str, Condition]
    spike_layer: Optional[int] = None
    spike_rule: Optional[str] = None
    spike_threshold: Optional[float] = None
    spike_layers: dict = field(default_factory=dict)  # every rule's layer (None: no spike)
    bos_ratios: list[float] = field(default_factory=list)
    bos_norms: list[float] = field(default_factory=list)
    massive_masks: Optional[dict] = None

    def info(self, name: str) -> dict:
        return self.conditions[name].info


def prepare_conditions(
    model,
    names: Sequence[str],
    reference_texts: TextsLike,
    *,
    rotary: str = "pre",
    max_tokens: int = 512,
    bos: BosPolicy = "checkpoint",
    threshold: float = 5.0,
    batch_size: int = 8,
    spike_rule: str = analysis.DEFAULT_SPIKE_RULE,
    spike_threshold: float = SPIKE_THRESHOLD,
) -> ConditionSet:
    """Build ``names`` for ``model``: the spike layer and massive masks are computed from the first
    ``max_tokens`` tokens of ``reference_texts`` only if a condition needs them.

    The spike layer is ``spike_rule`` (:data:`drope_lens.analysis.SPIKE_RULES`) applied to the
    model's mean BOS profile over the reference texts; every rule's layer is recorded
    (``spike_layers``). No spike under the chosen rule is an error (never another layer).
    ``threshold``: Exp 2's massive-value threshold; ``spike_threshold``: the ``first_above`` ratio.
    """
    from .disruption import identify_massive

    names = check_conditions(names)
    analysis.check_spike_rule(spike_rule)
    out = ConditionSet({})
    if any(n in NEEDS_SPIKE for n in names):
        ratios, norms = bos_norm_profile(model, reference_texts, max_tokens=max_tokens, bos=bos,
                                         batch_size=batch_size)
        out.spike_layers = analysis.spike_layers_all(ratios, spike_threshold, norms)
        out.spike_rule, out.spike_threshold = spike_rule, spike_threshold
        out.spike_layer = out.spike_layers[spike_rule]
        out.bos_ratios = [float(r) for r in ratios]
        out.bos_norms = [float(r) for r in norms]
        if out.spike_layer is None:
            needing = [n for n in names if n in NEEDS_SPIKE]
            raise ValueError(f"conditions {needing} need a spike layer, but under spike rule {spike_rule!r} the model "
                             f"has none (mean BOS ratios per layer {np.round(ratios, 3).tolist()}; threshold "
                             f"{spike_threshold:g}); other rules give {out.spike_layers}. Choose another "
                             f"--spike-rule (allowed: {list(analysis.SPIKE_RULES)}).")
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
