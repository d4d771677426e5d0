"""Shared analysis of experiment results: the BOS spike layer, and layers as categories.

**Spike layer** (:func:`spike_layer`): the layer where the BOS token's residual stream becomes
massive, by one of three named rules (:data:`SPIKE_RULES`):

- ``argmax`` (the default, the study's): the layer with the largest BOS-norm ratio
  ``||resid_post[0]|| / mean_{t>=1} ||resid_post[t]||``. The study's own per-layer ratios
  (``reference/seed-study/rope_vs_drope_phase_metrics.json``, ``baseline.bos_ratio.mean``) give
  layer 1 for RoPE and layer 2 for DroPE, the layers it reported and ablated.
- ``first_above``: the first layer whose ratio exceeds ``threshold`` (default 2).
- ``jump``: the layer whose block raises ``||resid[0]||`` the most, i.e. the argmax over layers l
  of ``||resid_post_l[0]|| - ||resid_pre_l[0]||``: where the BOS spike is written. It needs
  ``resid_norms``: ``n_layers + 1`` BOS norms, ``||resid_pre_0[0]||`` (the embedding) followed by
  ``||resid_post_l[0]||`` for every layer.

**No spike** means the same everywhere (:func:`spike_layer` returns ``None``; tables hold
``<NA>`` and print ``"none"``): ``first_above`` when no ratio exceeds the threshold, ``jump`` when
no block raises the BOS norm, ``argmax`` only when no ratio is finite. The ablation conditions
(``bos_mlp``, ``bos_v_spike``) refuse to run on "no spike" rather than pick another layer.

**Layers are categories** (:func:`layer_distribution`): a per-text layer is summarised by its mode
and its distribution over texts (``"1: 8/10, 2: 2/10"``), never by a mean; ``"none"`` is a
category of its own, never a number.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: figures and the report import this module, keep it light
    from jaxtyping import Float

SpikeRule = Literal["argmax", "first_above", "jump"]
SPIKE_RULES: tuple[str, ...] = ("argmax", "first_above", "jump")
DEFAULT_SPIKE_RULE: SpikeRule = "argmax"
SPIKE_THRESHOLD = 2.0
#: How "no spike" / "no layer" prints.
NONE = "none"


def check_spike_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`SPIKE_RULES` (an error names the allowed values)."""
    if rule not in SPIKE_RULES:
        raise ValueError(f"spike rule {rule!r} is unknown; allowed values are {list(SPIKE_RULES)}.")
    return rule


def spike_layer(
    ratios: Float[np.ndarray, "layer"] | Sequence[float],
    rule: SpikeRule = DEFAULT_SPIKE_RULE,
    threshold: float = SPIKE_THRESHOLD,
    resid_norms: Optional[Float[np.ndarray, "layer_plus_1"] | Sequence[float]] = None,
) -> Optional[int]:
    """The BOS spike layer (0-based index) under ``rule`` (module docstring), or ``None`` for "no spike".

    ``ratios``: per layer, ``||resid_post[0]|| / mean_{t>=1} ||resid_post[t]||`` (dimensionless).
    ``resid_norms`` (``jump`` only): ``[||resid_pre_0[0]||, ||resid_post_0[0]||, ...,
    ||resid_post_{L-1}[0]||]`` (L2 norms, ``n_layers + 1`` entries).
    """
    check_spike_rule(rule)
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.ndim != 1 or ratios.size == 0:
        raise ValueError(f"ratios: need one BOS-norm ratio per layer, got shape {ratios.shape}.")
    if rule == "argmax":
        if not np.isfinite(ratios).any():
            return None
        return int(np.nanargmax(np.where(np.isfinite(ratios), ratios, np.nan)))
    if rule == "first_above":
        if not threshold > 0:
            raise ValueError(f"threshold={threshold}: the BOS-ratio threshold must be positive.")
        above = np.flatnonzero(ratios > threshold)
        return int(above[0]) if above.size else None
    if resid_norms is None:
        raise ValueError("spike rule 'jump' needs resid_norms (||resid_pre_0[0]|| then ||resid_post_l[0]|| per layer).")
    norms = np.asarray(resid_norms, dtype=np.float64)
    if norms.shape != (ratios.size + 1,):
        raise ValueError(f"resid_norms: need n_layers + 1 = {ratios.size + 1} BOS norms (the embedding's, then one "
                         f"per layer), got shape {norms.shape}.")
    jumps = np.diff(norms)
    if not np.isfinite(jumps).any():
        return None
    best = int(np.nanargmax(np.where(np.isfinite(jumps), jumps, np.nan)))
    return best if jumps[best] > 0 else None


def spike_layers_all(
    ratios: Sequence[float],
    threshold: float = SPIKE_THRESHOLD,
    resid_norms: Optional[Sequence[float]] = None,
) -> dict[str, Optional[int]]:
    """``{rule: layer or None}`` for every rule of :data:`SPIKE_RULES` (``jump``: None without ``resid_norms``)."""
    return {rule: (spike_layer(ratios, rule, threshold, resid_norms)
                   if rule != "jump" or resid_norms is not None else None) for rule in SPIKE_RULES}


def spike_table(layers: pd.DataFrame, keys: Sequence[str] = ("model", "variant", "sample"),
                threshold: float = SPIKE_THRESHOLD) -> pd.DataFrame:
    """Per group of ``keys`` (one text, or one model's mean profile): the spike layer under each rule.

    ``layers``: one row per (``keys``, ``layer``) with ``bos_ratio``, and ``bos_norm`` plus
    ``bos_norm_pre`` (``||resid_pre_l[0]||``) for the ``jump`` rule (missing columns: ``<NA>``).
    Columns ``spike_layer_argmax``, ``spike_layer_first_above``, ``spike_layer_jump``: nullable
    integers, ``<NA>`` = no spike.
    """
    keys = list(keys)
    has_norms = {"bos_norm", "bos_norm_pre"} <= set(layers.columns)
    rows = []
    for group, frame in layers.groupby(keys, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        frame = frame.sort_values("layer")
        if not np.array_equal(frame["layer"].to_numpy(), np.arange(len(frame))):
            raise ValueError(f"{dict(zip(keys, group))}: layers {frame['layer'].tolist()} are not 0..n-1 once each.")
        norms = None
        if has_norms and frame["bos_norm_pre"].notna().all():
            norms = np.concatenate([[frame["bos_norm_pre"].iloc[0]], frame["bos_norm"].to_numpy()])
        found = spike_layers_all(frame["bos_ratio"].to_numpy(), threshold, norms)
        rows.append({**dict(zip(keys, group)), **{f"spike_layer_{r}": found[r] for r in SPIKE_RULES}})
    out = pd.DataFrame(rows, columns=[*keys, *(f"spike_layer_{r}" for r in SPIKE_RULES)])
    for rule in SPIKE_RULES:
        out[f"spike_layer_{rule}"] = pd.array(out[f"spike_layer_{rule}"].tolist(), dtype="Int64")
    return out


def layer_distribution(values: Sequence) -> dict:
    """A layer (a category) over texts: ``mode`` (the most common value, ties to the lower layer,
    ``"none"`` ranked after layers), ``mode_share`` (its share of texts, 0-1), ``distribution``
    (``"1: 8/10, none: 2/10"``) and ``n_texts``. Missing values (no layer) are the category ``"none"``."""
    labels = [NONE if v is None or pd.isna(v) else int(v) for v in values]
    if not labels:
        return {"mode": NONE, "mode_share": float("nan"), "distribution": "", "n_texts": 0}
    counts = Counter(labels)
    order = sorted(counts, key=lambda k: (-counts[k], k == NONE, k if k != NONE else 0))
    n = len(labels)
    shown = sorted(counts, key=lambda k: (k == NONE, k if k != NONE else 0))
    return {"mode": str(order[0]), "mode_share": counts[order[0]] / n,
            "distribution": ", ".join(f"{k}: {counts[k]}/{n}" for k in shown), "n_texts": n}


def layer_summary(table: pd.DataFrame, columns: Sequence[str], by: Sequence[str] = ("model", "variant")) -> pd.DataFrame:
    """Per group of ``by`` and layer column of ``table`` (one row per text): :func:`layer_distribution`.

    Columns: ``by``, ``quantity``, ``mode`` (a string: a layer index or ``"none"``), ``mode_share``,
    ``distribution``, ``n_texts``."""
    rows = []
    for group, frame in table.groupby(list(by), sort=True):
        group = group if isinstance(group, tuple) else (group,)
        for column in columns:
            rows.append({**dict(zip(by, group)), "quantity": column, **layer_distribution(frame[column].tolist())})
    return pd.DataFrame(rows, columns=[*by, "quantity", "mode", "mode_share", "distribution", "n_texts"])


def compare_layers(summary: pd.DataFrame) -> pd.DataFrame:
    """A :func:`layer_summary` with RoPE and DroPE side by side: ``rope``/``drope`` as
    ``"mode (distribution)"`` strings."""
    frame = summary.assign(cell=[f"{m} ({d})" for m, d in zip(summary["mode"], summary["distribution"])])
    wide = frame.pivot_table(index="quantity", columns="variant", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[v for v in ("rope", "drope") if v in wide.columns])
    wide.columns.name = None
    return wide.reset_index()


def layer_label(value) -> str:
    """A layer for display: its index, or ``"none"``."""
    return NONE if value is None or pd.isna(value) else str(int(value))
