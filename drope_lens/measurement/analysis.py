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

**Measurements several experiments share** (torch and the model are imported only when they run):

- :func:`massive_mask`, :func:`sequence_norms`, :func:`identify_massive`: the massive Q/K/V
  entries of Exp 1 (per text), Exp 2 (averaged over identification texts) and the ``massive_zero``
  condition of Exp 3-6. ``M[h, i] = ||x[:, h, i]||_2 / sqrt(T)`` over the sequence axis; an entry
  is massive when ``M[h, i] > threshold * mean(M)`` over all heads x dims of its layer and tensor.
- :func:`bos_norm_profile`, :func:`bos_norm_ratios`: the BOS-norm profile (ratios and norms) that
  the spike-layer rules above take, for the ablation conditions of Exp 3-6.
- :func:`prepare_conditions`: what the ablation conditions of Exp 3-6 need from a model before
  they run (its spike layer, its massive Q/K entries, computed on reference texts disjoint from
  the task prompts and evaluation texts), and the conditions built from them.

They tokenise with :func:`drope_lens.measurement.tokens.tokenize` (imported when called).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import numpy as np
import pandas as pd

# Annotations only: figures and the report import this module, keep it light (the functions that
# run a model import torch themselves).
if TYPE_CHECKING:  # pragma: no cover
    import torch
    from jaxtyping import Bool, Float

    from drope_lens.hooks.conditions import Condition
    from drope_lens.measurement.texts import TextsLike

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


# ------------------------------------------------------------------------------------------
# Massive Q/K/V entries (Exp 1, Exp 2, the massive_zero condition of Exp 3-6)
# ------------------------------------------------------------------------------------------
#: tensor ("q", "k") -> layer -> bool ``[head, d_head]``: the massive entries of each layer.
Masks = dict[str, dict[int, "torch.Tensor"]]


def massive_mask(m: Float["torch.Tensor", "*layers head d_head"], threshold: float) -> Bool["torch.Tensor", "*layers head d_head"]:
    """Entries of M above ``threshold`` times the mean of M over all heads x dims of its layer."""
    return m > threshold * m.mean(dim=(-2, -1), keepdim=True)


class _StopForward(Exception):
    """Raised by the last capture hook: nothing after the last layer's q/k is needed."""


def _stop_forward(x, hook):
    raise _StopForward


def sequence_norms(
    model, tokens: "torch.Tensor", tensors: Sequence[str], rotary: str
) -> dict[tuple[int, str], "torch.Tensor"]:
    """M for every layer and tensor of one batch of equal-length token rows: ``[batch, head, d]``
    (the L2 norm over positions of each head dim, divided by sqrt(T); the activations' units).

    The forward stops at the last layer's ``hook_rot_k`` (after its q, k and v hooks have
    fired): that layer's attention, its MLP and the final norm are not needed, so they are not run.
    """
    import torch

    from drope_lens.hooks import capture_dim_norms

    store: dict = {}
    hooks = capture_dim_norms(store, model.cfg.n_layers, tensors=tensors, rotary=rotary)
    hooks.append((f"blocks.{model.cfg.n_layers - 1}.attn.hook_rot_k", _stop_forward))
    with torch.inference_mode():
        try:
            model.run_with_hooks(tokens.to(model.cfg.device), return_type=None, fwd_hooks=hooks)
        except _StopForward:
            pass
    missing = [key for key in ((layer, t) for layer in range(model.cfg.n_layers) for t in tensors) if key not in store]
    if missing:  # pragma: no cover - a model whose attention fires hooks in another order
        raise RuntimeError(f"capture hooks did not fire for {missing[:3]}...; the early stop came too soon.")
    return store


def identify_massive(
    model, texts: "TextsLike", *, threshold: float, max_tokens: int, rotary: str = "pre", batch_size: int = 16,
    bos: str = "checkpoint",
) -> Masks:
    """Massive (head, dim) entries of q and k per layer, from M averaged over ``texts`` (Exp 2's
    identification; ``bos``: ``"checkpoint"`` or ``"always"``, see ``drope_lens.measurement.tokens.tokenize``)."""
    import torch

    from drope_lens.measurement.tokens import batches_by_length, tokenize
    from drope_lens.measurement.texts import as_texts

    texts = as_texts(texts, name_prefix="identification")
    tokens = tokenize(model, texts, max_tokens, bos=bos)
    sums: dict[tuple[int, str], torch.Tensor] = {}
    for _, batch in batches_by_length(tokens, batch_size):
        for key, m in sequence_norms(model, batch, ("q", "k"), rotary).items():
            total = m.sum(dim=0)
            sums[key] = sums[key] + total if key in sums else total
    for tensor in ("q", "k"):  # one device->host copy per tensor (k has fewer heads under GQA)
        keys = sorted(k for k in sums if k[1] == tensor)
        first = sums[keys[0]].device  # layers may sit on several GPUs (load_model(n_devices=...))
        sums.update(zip(keys, torch.stack([sums[k].to(first) for k in keys]).cpu()))
    masks: Masks = {"q": {}, "k": {}}
    for (layer, tensor), total in sorted(sums.items()):
        masks[tensor][layer] = massive_mask(total / len(texts), threshold)
    return masks


def random_masks(massive: Masks, seed: int, pool: str = "non_massive") -> Masks:
    """Per layer and tensor, as many random entries as ``massive`` has, drawn with ``seed`` (Exp 2's
    random control; ``pool="all"`` draws from all entries, massive ones included)."""
    import torch

    out: Masks = {}
    for t_index, (tensor, layers) in enumerate(sorted(massive.items())):
        out[tensor] = {}
        for layer, mask in sorted(layers.items()):
            rng = np.random.default_rng([seed, layer, t_index])
            candidates = np.flatnonzero(~mask.numpy().ravel()) if pool == "non_massive" else np.arange(mask.numel())
            count = int(mask.sum())
            if count > candidates.size:
                raise ValueError(f"layer {layer} {tensor}: {count} massive entries but only {candidates.size} to draw from.")
            chosen = rng.choice(candidates, size=count, replace=False)
            flat = torch.zeros(mask.numel(), dtype=torch.bool)
            flat[torch.from_numpy(chosen)] = True
            out[tensor][layer] = flat.view(mask.shape)
    return out


def masks_on_devices(model, masks: Optional[Masks]) -> Optional[Masks]:
    """Each layer's masks on the device of that layer (layers may sit on several GPUs)."""
    if masks is None:
        return None
    from drope_lens.model.placement import layer_device

    return {t: {layer: m.to(layer_device(model, layer)) for layer, m in per_layer.items()}
            for t, per_layer in masks.items()}


def identification_frame(model, masks: Masks) -> pd.DataFrame:
    """The identified massive entries as a tidy frame: model, layer, tensor, count, heads, dims."""
    import torch

    from drope_lens.measurement.tokens import model_name, model_variant

    rows = []
    for tensor, layers in sorted(masks.items()):
        for layer, mask in sorted(layers.items()):
            heads, dims = torch.nonzero(mask, as_tuple=True)
            rows.append({"model": model_name(model), "variant": model_variant(model), "layer": layer,
                         "tensor": tensor, "count": int(mask.sum()), "heads": heads.tolist(), "dims": dims.tolist()})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# BOS-norm profile (the spike layer of the ablation conditions, Exp 3-6)
# ------------------------------------------------------------------------------------------
def bos_norm_profile(model, texts: "TextsLike", *, max_tokens: int = 512, bos: str = "checkpoint",
                     batch_size: int = 8) -> tuple[Float[np.ndarray, "layer"], Float[np.ndarray, "layer_plus_1"]]:
    """The model's mean BOS profile over ``texts``: ``(ratios, norms)`` (float64).

    ``ratios[l]`` = mean over texts of ||resid_post_l[0]|| / mean_{t>=1} ||resid_post_l[t]||
    (dimensionless, n_layers entries); ``norms`` = mean over texts of ``[||resid_pre_0[0]||,
    ||resid_post_0[0]||, ..., ||resid_post_{L-1}[0]||]`` (L2 norms, n_layers + 1 entries), as
    :func:`spike_layer` takes them.
    """
    import torch

    from drope_lens.measurement.tokens import batches_by_length, tokenize
    from drope_lens.hooks.capture import capture_bos_norms
    from drope_lens.measurement.texts import as_texts

    with torch.inference_mode():
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


def bos_norm_ratios(model, texts: "TextsLike", *, max_tokens: int = 512, bos: str = "checkpoint",
                    batch_size: int = 8) -> Float[np.ndarray, "layer"]:
    """Per layer: ||resid_post[0]|| / mean_{t>=1} ||resid_post[t]||, averaged over ``texts``
    (float64 array of length n_layers; see :func:`bos_norm_profile`)."""
    return bos_norm_profile(model, texts, max_tokens=max_tokens, bos=bos, batch_size=batch_size)[0]


# ------------------------------------------------------------------------------------------
# Condition preparation (the ablation conditions of Exp 3-6)
# ------------------------------------------------------------------------------------------
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
    reference_texts: "TextsLike",
    *,
    rotary: str = "pre",
    max_tokens: int = 512,
    bos: str = "checkpoint",
    threshold: float = 5.0,
    batch_size: int = 8,
    spike_rule: str = DEFAULT_SPIKE_RULE,
    spike_threshold: float = SPIKE_THRESHOLD,
) -> ConditionSet:
    """Build ``names`` for ``model``: the spike layer and massive masks are computed from the first
    ``max_tokens`` tokens of ``reference_texts`` only if a condition needs them.

    The spike layer is ``spike_rule`` (:data:`SPIKE_RULES`) applied to the
    model's mean BOS profile over the reference texts; every rule's layer is recorded
    (``spike_layers``). No spike under the chosen rule is an error (never another layer).
    ``threshold``: Exp 2's massive-value threshold; ``spike_threshold``: the ``first_above`` ratio.
    """
    from drope_lens.hooks.conditions import NEEDS_MASSIVE, NEEDS_SPIKE, build_condition, check_conditions

    names = check_conditions(names)
    check_spike_rule(spike_rule)
    out = ConditionSet({})
    if any(n in NEEDS_SPIKE for n in names):
        ratios, norms = bos_norm_profile(model, reference_texts, max_tokens=max_tokens, bos=bos,
                                         batch_size=batch_size)
        out.spike_layers = spike_layers_all(ratios, spike_threshold, norms)
        out.spike_rule, out.spike_threshold = spike_rule, spike_threshold
        out.spike_layer = out.spike_layers[spike_rule]
        out.bos_ratios = [float(r) for r in ratios]
        out.bos_norms = [float(r) for r in norms]
        if out.spike_layer is None:
            needing = [n for n in names if n in NEEDS_SPIKE]
            raise ValueError(f"conditions {needing} need a spike layer, but under spike rule {spike_rule!r} the model "
                             f"has none (mean BOS ratios per layer {np.round(ratios, 3).tolist()}; threshold "
                             f"{spike_threshold:g}); other rules give {out.spike_layers}. Choose another "
                             f"--spike-rule (allowed: {list(SPIKE_RULES)}).")
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
