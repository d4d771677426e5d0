"""What the ablation conditions need from a model before they run: its BOS spike layer (Exp 4's
BOS-norm profile under a named rule, :mod:`drope_lens.measurement.analysis`) and its massive Q/K entries
(Exp 2's identification), computed on the first 512 tokens (as Exp 4-6 measure) of reference texts
disjoint from the task prompts and evaluation texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from drope_lens.measurement import analysis
# the BOS profile and the massive-entry identification live in drope_lens.measurement.analysis (importable here as before)
from drope_lens.measurement.analysis import bos_norm_profile, bos_norm_ratios, identify_massive  # noqa: F401
from drope_lens.hooks.conditions import NEEDS_MASSIVE, NEEDS_SPIKE, Condition, build_condition, check_conditions
from drope_lens.measurement.texts import TextsLike

from .common import BosPolicy

SPIKE_THRESHOLD = analysis.SPIKE_THRESHOLD


def spike_layer(ratios: Sequence[float], rule: str = analysis.DEFAULT_SPIKE_RULE, threshold: float = SPIKE_THRESHOLD,
                resid_norms: Optional[Sequence[float]] = None) -> Optional[int]:
    """The spike layer under ``rule``, or None for no spike (:func:`drope_lens.measurement.analysis.spike_layer`)."""
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

    The spike layer is ``spike_rule`` (:data:`drope_lens.measurement.analysis.SPIKE_RULES`) applied to the
    model's mean BOS profile over the reference texts; every rule's layer is recorded
    (``spike_layers``). No spike under the chosen rule is an error (never another layer).
    ``threshold``: Exp 2's massive-value threshold; ``spike_threshold``: the ``first_above`` ratio.
    """
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
